"""The fault suite's harness: a simulated Discord with churn, the ingest, PostgreSQL, the serve and viewers.

:class:`Cluster` starts everything for real (the ingest in-process or as ``dzone ingest`` subprocesses,
the serve in-process), waits for the first full sync, then churns: presences, joins, leaves and renames
from the simulator's scenario, role colours from here. A fault is injected while it churns; then
:meth:`Cluster.pause_and_converge` stops every change and measures how long until ``discord_users``
equals the simulator's truth exactly and every viewer's map equals the database. Docs: docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingest.worker import IngestWorker
from serve import WebSocketServer
from shared.feed import LISTENER_APPLICATION_NAME
from shared.settings import IngestSettings
from simulator import SimConfig, Simulator
from simulator.testing import SIM_TOKEN
from tests.ingest_helpers import db_view, differences, truth_rows
from tests.pgbouncer import PgBouncer
from tests.test_ingest_gateway import settings_for
from tests.test_serve_support import Viewer, db_world, settings

# The default world and churn (docs/faults.md): small enough for CI on 2 cores, busy enough to race.
GUILD_SIZES = [int(s) for s in os.environ.get("DZONE_FAULTS_GUILD_SIZES", "500,500,500").split(",")]
PRESENCE_RATE = float(os.environ.get("DZONE_FAULTS_PRESENCE_RATE", "150"))
CHURN_RATE = float(os.environ.get("DZONE_FAULTS_CHURN_RATE", "30"))  # joins, leaves, nick changes
ROLE_COLOUR_RATE = float(os.environ.get("DZONE_FAULTS_ROLE_COLOUR_RATE", "5"))
CHURN_EVENTS = int(os.environ.get("DZONE_FAULTS_CHURN_EVENTS", "300"))  # before and after each fault
HEARTBEAT_INTERVAL_MS = 1000  # the simulator's HELLO: zombie checks every second
ZOMBIE_TIMEOUT_S = 3.0  # discord.py's heartbeat_timeout in-process (60 s by default)
CONVERGE_BUDGET_S = 5.0
CONVERGE_BUDGET_AFTER_RESTART_S = 10.0
SHOWN_WHEN_LATE_S = 30.0  # keep polling past the budget, to report how late (or that it never converged)
STARTUP_TIMEOUT_S = 60.0

# (fault, seconds to converge) of every case run in this session, for the terminal summary
CONVERGENCE: list[tuple[str, float | None]] = []


class InProcessIngest:
    """The real :class:`IngestWorker` run by :meth:`IngestWorker.run` in a task of this event loop."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.worker: IngestWorker | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.worker = worker = IngestWorker(self.settings)
        client = worker.client
        # Zombie detection within seconds, not discord.py's default minute (the black-hole fault).
        client._connection.heartbeat_timeout = ZOMBIE_TIMEOUT_S
        # No 5 s between IDENTIFYs of a bucket: the cluster's simulator does not pace them (the budget
        # itself is still checked before each IDENTIFY).
        client.identify_pacer.interval_s = 0.0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(worker.run(self._stop), name="ingest-worker")

    def failure(self) -> str | None:
        """Why the worker stopped on its own, or None while it runs."""
        if self._task is None or not self._task.done():
            return None
        exc = self._task.exception() if not self._task.cancelled() else None
        return f"the ingest worker stopped: {exc!r}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, 30)
        self._task = None


class IngestProcess:
    """``dzone ingest`` as a subprocess (the SIGKILL case, the shards of the cluster); logs to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "dzone"),
                "ingest",
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def failure(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return None
        return f"dzone ingest exited {self.proc.returncode}: {self.log_tail()}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing is closed cleanly."""
        assert self.proc is not None and self.proc.returncode is None, self.failure()
        self.proc.kill()
        await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        """SIGTERM and wait: the ingest flushes and exits 0 (one that already died is in failure())."""
        if self.proc is None or self.proc.returncode is not None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"dzone ingest ignored SIGTERM: {self.log_tail()}") from None
        assert proc.returncode == 0, f"dzone ingest exited {proc.returncode} on SIGTERM: {self.log_tail()}"


Ingest = InProcessIngest | IngestProcess


@dataclass
class LiveViewer:
    """A real WebSocket viewer of one server that applies every frame as it arrives."""

    serve: WebSocketServer
    server_id: str
    hide_offline: bool
    viewer: Viewer | None = None
    presences: int = 0  # presence frames received (the relayed changes)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        ws = await connect(f"ws://127.0.0.1:{self.serve.port}/", open_timeout=5)
        self.viewer = viewer = Viewer(ws)
        await viewer.expect("server-list")
        await viewer.join(self.server_id)
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"viewer-{self.server_id}")

    async def _read(self) -> None:
        assert self.viewer is not None
        try:
            while True:
                frame = await self.viewer.recv(timeout=3600)
                assert frame.get("type") in ("presence", "message", "server-join"), frame
                self.presences += frame["type"] == "presence"
        except ConnectionClosed:
            self.closed.set()

    def failure(self) -> str | None:
        """Why this viewer stopped reading (the serve closed it, or a frame it should not get), or None."""
        reader = self._reader
        if reader is None or not reader.done() or reader.cancelled():
            return None
        exc = reader.exception()
        return f"viewer of {self.server_id}: " + (repr(exc) if exc else "closed by the serve")

    @property
    def world(self) -> dict[str, dict[str, Any]]:
        assert self.viewer is not None
        return self.viewer.world

    async def close(self) -> None:
        # Close the socket first: the reader then ends on ConnectionClosed. Cancelling it while a frame
        # arrives could be lost inside wait_for (Python 3.11), leaving the reader waiting for an hour.
        if self.viewer is not None:
            await self.viewer.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(asyncio.gather(self._reader, return_exceptions=True), 10)
            if not self._reader.cancelled() and self._reader.exception():
                raise self._reader.exception()  # type: ignore[misc]


class Cluster:
    """Everything of one fault case; use :func:`cluster` to start and stop it."""

    def __init__(
        self,
        sim: Simulator,
        database_url: str,
        tmp_path: Path,
        *,
        seed: int,
        pooler: PgBouncer | None = None,
    ) -> None:
        self.sim = sim
        self.database_url = database_url
        # Behind a pooler the ingest and the serve reach the database through it, with the documented
        # settings (docs/postgres.md); the harness itself always reads the database directly.
        self.pooler = pooler
        self.app_url = pooler.url if pooler is not None else database_url
        self.app_settings: dict[str, Any] = (
            {"database_direct_url": database_url, "database_pooler": "transaction"} if pooler else {}
        )
        self.database = database_url.rsplit("/", 1)[1]
        self.tmp_path = tmp_path
        self.rng = random.Random(seed)
        self.ingests: list[Ingest] = []
        self.serves: list[WebSocketServer] = []
        self.viewers: list[LiveViewer] = []
        self.visible_hidden: dict[str, bool] = {}  # server_id -> hide_offline
        self._conn: asyncpg.Connection | None = None
        self._colouring = asyncio.Event()
        self._colour_task: asyncio.Task[None] | None = None
        self.last_differences: list[str] = []

    # -- database ---------------------------------------------------------------------------------

    async def db(self) -> asyncpg.Connection:
        """The harness's own connection, opened again after a fault closed it."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.database_url, timeout=5)
        return self._conn

    async def backend_pids(self, *, application_name: str | None = None) -> list[int]:
        """Backends of this test's database other than the harness's own (optionally by name)."""
        conn = await self.db()
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
            " AND ($2::text IS NULL OR application_name = $2)",
            self.database,
            application_name,
        )
        return [r["pid"] for r in rows]

    async def terminate(self, pids: list[int]) -> int:
        conn = await self.db()
        terminated = 0
        for pid in pids:
            terminated += bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
        return terminated

    async def listener_pid(self) -> int:
        pids = await self.backend_pids(application_name=LISTENER_APPLICATION_NAME)
        assert len(pids) == len(self.serves), f"one LISTEN backend per serve, found {pids}"
        return pids[0]

    # -- the parts --------------------------------------------------------------------------------

    def in_process_ingest(self, **overrides: Any) -> InProcessIngest:
        return InProcessIngest(settings_for(self.sim, self.app_url, **self.app_settings, **overrides))

    def ingest_process(self, name: str, **env: str) -> IngestProcess:
        base = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "DATABASE_URL")}
        base.update(
            DISCORD_BOT_TOKEN=SIM_TOKEN,
            DATABASE_URL=self.app_url,
            DZONE_DISCORD_API_BASE=self.sim.api_base,
            DZONE_DISCORD_GATEWAY_URL=self.sim.gateway_url,
            DZONE_GUILD_READY_TIMEOUT_S="0.1",
            DZONE_STATS_INTERVAL_S="0",
            DZONE_INGEST_HTTP_PORT="0",  # no health port: shards and other test runs would share it
        )
        if self.pooler is not None:
            base.update(DATABASE_DIRECT_URL=self.database_url, DZONE_DATABASE_POOLER="transaction")
        base.update(env)
        return IngestProcess(base, self.tmp_path / f"{name}.log")

    async def start_serve(self) -> WebSocketServer:
        serve = WebSocketServer(
            port=0, host="127.0.0.1", settings=settings(self.app_url, **self.app_settings)
        )
        await serve.open()
        self.serves.append(serve)
        return serve

    async def restart_serve(self, index: int) -> None:
        """Close one replica (its viewers are cut), open a new one, and reconnect those viewers to it."""
        old = self.serves[index]
        await old.close()
        cut = [v for v in self.viewers if v.serve is old]
        for viewer in cut:
            await asyncio.wait_for(viewer.closed.wait(), 10)
            await viewer.close()
        new = WebSocketServer(port=0, host="127.0.0.1", settings=settings(self.app_url, **self.app_settings))
        await new.open()
        self.serves[index] = new
        for viewer in cut:
            viewer.serve = new
            await viewer.open()

    async def open_viewers(self) -> None:
        """One viewer per server on every serve replica."""
        for serve in self.serves:
            for server_id, hide in self.visible_hidden.items():
                viewer = LiveViewer(serve, server_id, hide)
                await viewer.open()
                self.viewers.append(viewer)

    def failures(self) -> list[str]:
        """An ingest that died or a viewer that stopped: the case fails with this, whatever the rows say."""
        parts: list[Ingest | LiveViewer] = [*self.ingests, *self.viewers]
        return [f for f in (p.failure() for p in parts) if f]

    # -- churn ------------------------------------------------------------------------------------

    def start_churn(self) -> None:
        self.sim.resume()
        self._colouring.set()
        if self._colour_task is None:
            self._colour_task = asyncio.create_task(self._recolour_roles(), name="role-colours")

    async def _recolour_roles(self) -> None:
        """Role colour changes at ROLE_COLOUR_RATE while churning (the scenario has none)."""
        world = self.sim.world
        while True:
            await self._colouring.wait()
            await asyncio.sleep(self.rng.expovariate(ROLE_COLOUR_RATE))  # pacing, not synchronisation
            if not self._colouring.is_set():
                continue  # paused while we slept: the truth must not move any more
            guild = self.rng.choice(list(world.guilds.values()))
            roles = [r for r in guild.roles.values() if r.id != guild.id and not r.managed]
            if roles:
                await self.sim.set_role_color(
                    guild.id, self.rng.choice(roles).id, self.rng.randrange(1 << 24)
                )

    async def churn(self, events: int = CHURN_EVENTS, timeout: float = 60.0) -> None:
        """Let the scenario apply ``events`` more changes (the storm goes on while a fault lasts)."""
        target = self.sim.changes_applied + events
        await _wait(lambda: self.sim.changes_applied >= target, timeout, f"{events} scenario changes")

    # -- convergence ------------------------------------------------------------------------------

    async def converged(self) -> bool:
        """The database equals the truth exactly, and every viewer's map equals its server's rows."""
        truth = truth_rows(self.sim.state())
        try:
            conn = await self.db()
            seen = await db_view(conn)
            problems = differences(truth, seen)
            if problems:
                wrong = sum(
                    truth.get(sid, {}).get(uid) != seen.get(sid, {}).get(uid)
                    for sid in set(truth) | set(seen)
                    for uid in set(truth.get(sid, {})) | set(seen.get(sid, {}))
                )
                problems.insert(0, f"{wrong} rows differ from the truth")
            for viewer in self.viewers:
                if problems:
                    break
                expected = await db_world(conn, viewer.server_id, viewer.hide_offline)
                if viewer.world != expected:
                    differing = sorted(set(expected) ^ set(viewer.world)) or [
                        uid for uid in expected if expected[uid] != viewer.world.get(uid)
                    ]
                    problems.append(
                        f"viewer of {viewer.server_id}: {len(differing)} members differ, e.g. {differing[:3]}"
                    )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            problems = [f"database not readable yet: {exc!r}"]
        self.last_differences = problems
        return not problems

    async def wait_started(self) -> None:
        """The first full sync is done: rows equal the truth (nothing churns yet)."""
        await _wait(self.converged, STARTUP_TIMEOUT_S, "the first full sync", self)

    async def pause_and_converge(self, fault: str, budget: float) -> float:
        """Stop every change, then the seconds until the database and viewers equal the truth."""
        self.sim.pause()
        self._colouring.clear()
        started = time.monotonic()
        try:
            await _wait(self.converged, SHOWN_WHEN_LATE_S, f"convergence after {fault}", self)
        except AssertionError:
            CONVERGENCE.append((fault, None))
            raise
        seconds = time.monotonic() - started
        CONVERGENCE.append((fault, seconds))
        print(f"\n{fault}: converged after {seconds:.2f}s")
        assert seconds <= budget, f"{fault}: converged after {seconds:.2f}s, over the {budget}s budget"
        assert not self.failures(), self.failures()
        return seconds

    async def close(self) -> None:
        if self._colour_task is not None:
            self._colour_task.cancel()
            await asyncio.gather(self._colour_task, return_exceptions=True)
        for viewer in self.viewers:
            await viewer.close()
        for serve in self.serves:
            await serve.close()
        for ingest in self.ingests:
            await ingest.stop()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


async def _wait(
    condition: Callable[[], Any], timeout: float, what: str, cluster: Cluster | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if cluster is not None and cluster.failures():
            raise AssertionError(f"while waiting for {what}: {cluster.failures()}")
        if time.monotonic() > deadline:
            details = f"; first differences: {cluster.last_differences}" if cluster is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{details}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def cluster(
    database_url: str,
    tmp_path: Path,
    *,
    seed: int,
    ingests: Callable[[Cluster], list[Ingest]] | None = None,
    serves: int = 1,
    guild_sizes: list[int] | None = None,
    pooler: PgBouncer | None = None,
    sim_options: dict[str, Any] | None = None,
) -> AsyncIterator[Cluster]:
    """Simulator + ingest(s) + serve(s) + viewers, past the first sync, churning; everything stopped on exit.

    ``ingests`` builds the ingest handles (default: one in-process worker for every shard);
    ``sim_options`` are more SimConfig fields.
    """
    options: dict[str, Any] = {
        # Discord's one all-member request per guild per 30 s would make every case that IDENTIFYs
        # again within seconds of the start wait it out; the rate-limited-members case switches it on.
        "member_request_window_s": 0.0,
        **(sim_options or {}),
    }
    config = SimConfig(
        guild_sizes=guild_sizes or GUILD_SIZES,
        seed=seed,
        presence_rate=PRESENCE_RATE,
        churn=CHURN_RATE,
        start_paused=True,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        recommended_shards=2,
        **options,
    )
    async with Simulator(config) as sim:
        c = Cluster(sim, database_url, tmp_path, seed=seed, pooler=pooler)
        try:
            c.ingests = ingests(c) if ingests is not None else [c.in_process_ingest(shard_count=1)]
            for ingest in c.ingests:
                await ingest.start()
            await c.wait_started()
            server_ids = [g["id"] for g in sim.state()["guilds"]]
            # every other server shows its offline members, to check both kinds of viewer map
            c.visible_hidden = {sid: i % 2 == 0 for i, sid in enumerate(server_ids)}
            conn = await c.db()
            await conn.execute(
                "UPDATE discord_servers SET hide_offline = false WHERE server_id = ANY($1::text[])",
                [sid for sid, hide in c.visible_hidden.items() if not hide],
            )
            for _ in range(serves):
                await c.start_serve()
            await c.open_viewers()
            await _wait(c.converged, 20, "viewers equal to the database", c)
            c.start_churn()
            await c.churn()
            yield c
        finally:
            await c.close()
