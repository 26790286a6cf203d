"""The fault suite: each fault injected into the whole system while it churns, then exact convergence.

For every fault: the simulator churns (presences, joins, leaves, renames, role colours), the real ingest
writes, the serve relays to real viewers; the fault is injected, the storm goes on, then everything
pauses and ``discord_users`` must equal the simulator's truth for every member and every viewer's map
the database, within 5 s (10 s when an ingest restarted). Harness: tests/cluster.py; docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.rest import RestFault
from tests.cluster import (
    CONVERGE_BUDGET_AFTER_RESTART_S,
    CONVERGE_BUDGET_S,
    SHOWN_WHEN_LATE_S,
    Cluster,
    Ingest,
    IngestProcess,
    cluster,
)
from tests.pg import PgServer
from tests.pgbouncer import pgbouncer

Script = Callable[[Cluster, PgServer], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    script: Script
    budget: float = CONVERGE_BUDGET_S
    ingests: Callable[[Cluster], list[Ingest]] | None = None  # default: one in-process worker
    serves: int = 1
    needs_local_pg: bool = False  # restarts or reconfigures the PostgreSQL server itself
    pooled: bool = False  # the ingest and the serve go through a PgBouncer in transaction mode
    known_bug: str | None = None  # an ingest bug this case finds that is not fixed yet (strict xfail)


async def churn_until(c: Cluster, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Keep the storm going until ``condition`` holds (the ingest came back, chunks were sent...)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"churned {timeout}s and still not {what}: {c.failures()}")
        await c.churn(events=20, timeout=30)


async def counter_rises(c: Cluster, name: str, by: int = 1) -> None:
    """Churn until a simulator counter (identify, resume...) went up: the ingest came back."""
    target = c.sim.hub.counters[name] + by
    await churn_until(c, lambda: c.sim.hub.counters[name] >= target, f"{name} counted {target}")


# -- PostgreSQL faults ---------------------------------------------------------------------------


async def postgres_restart(c: Cluster, pg: PgServer) -> None:
    await asyncio.to_thread(pg.restart, 2.0)  # the storm goes on in this loop meanwhile


async def logins_refused(c: Cluster, pg: PgServer) -> None:
    with pg.refuse_logins():  # every session of the server is terminated too
        await c.churn(events=800)


async def connections_cut(c: Cluster, pg: PgServer) -> None:
    for _ in range(2):
        assert await c.terminate(await c.backend_pids()) >= 2  # the ingest's and the serve's
        await c.churn()


async def listener_killed(c: Cluster, pg: PgServer) -> None:
    assert await c.terminate([await c.listener_pid()]) == 1


async def listener_frozen(c: Cluster, pg: PgServer) -> None:
    # A child of the PostgreSQL server the session started: stopped, so the feed probe does not come back.
    serve = c.serves[0]
    bound = serve.settings.listener_probe_interval_s + serve.settings.listener_probe_timeout_s
    pid = await c.listener_pid()
    seen: list[str] = []

    async def watch_readyz() -> None:  # the 503 lasts until the re-opened connection is proven
        while not seen:
            ready, problems = serve.readiness()
            if not ready and "feed" in problems:
                seen.append(problems["feed"])
            await asyncio.sleep(0.01)  # sampling /readyz's answer, not synchronisation

    os.kill(pid, signal.SIGSTOP)
    frozen = time.monotonic()
    watcher = asyncio.create_task(watch_readyz())
    try:
        await churn_until(c, lambda: bool(seen), "/readyz naming the feed", timeout=bound + 20)
        detected = time.monotonic() - frozen
        print(
            f"\nlistener-frozen: /readyz 503 ({seen[0]!r}) {detected:.2f}s after the freeze, bound {bound:g}s"
        )
        assert "probe not received" in seen[0]
        assert detected <= bound + 5, f"a frozen listener was seen after {detected:.1f}s, bound {bound}s"
        await c.churn(events=300)
    finally:
        watcher.cancel()
        os.kill(pid, signal.SIGCONT)


async def pooler_restart(c: Cluster, pg: PgServer) -> None:
    # Every client and server connection through PgBouncer is dropped mid-storm, then it comes back.
    assert c.pooler is not None
    await asyncio.to_thread(c.pooler.restart)
    await c.churn()


def one_ingest_process(c: Cluster) -> list[Ingest]:
    return [c.ingest_process("ingest", DZONE_SHARD_COUNT="1")]


async def ingest_sigkill(c: Cluster, pg: PgServer) -> None:
    ingest = c.ingests[0]
    assert isinstance(ingest, IngestProcess)
    await ingest.kill()
    await c.churn()
    await ingest.start()
    await counter_rises(c, "identify")


# -- Discord faults (simulator) ------------------------------------------------------------------


async def black_hole(c: Cluster, pg: PgServer) -> None:
    c.sim.black_hole()
    await counter_rises(c, "resume")  # discord.py's zombie detection gave up on the silent link


async def heartbeat_interval_change(c: Cluster, pg: PgServer) -> None:
    c.sim.set_heartbeat_interval(500)
    await c.sim.drop_connections()
    await counter_rises(c, "resume")


async def bot_added(c: Cluster, pg: PgServer) -> None:
    await c.sim.add_guild(400)


async def guild_outage(c: Cluster, pg: PgServer) -> None:
    guild_id = next(iter(c.sim.world.guilds))
    await c.sim.start_guild_outage(guild_id)
    await c.churn()  # the guild changes unseen; its rows must stay (an outage is not a removal)
    conn = await c.db()
    assert await conn.fetchval("SELECT count(*) FROM discord_users WHERE server_id = $1", str(guild_id))
    await c.sim.end_guild_outage(guild_id)


async def session_expiry(c: Cluster, pg: PgServer) -> None:
    c.sim.expire_sessions()
    await counter_rises(c, "identify")


async def rest_errors_at_login(c: Cluster, pg: PgServer) -> None:
    await c.ingests[0].stop()
    await c.churn()
    c.sim.queue_rest_faults([RestFault(502), RestFault(429, retry_after_s=1.0)])
    c.ingests[0] = c.in_process_ingest(shard_count=1)
    await c.ingests[0].start()
    await counter_rises(c, "identify")
    assert c.sim.rest.faults_served == 2


async def slow_chunks(c: Cluster, pg: PgServer) -> None:
    c.sim.set_chunk_faults(delay_s=0.5)
    chunks = c.sim.hub.counters["member_chunks"]
    await c.sim.send_invalid_session(resumable=False)
    every_guild = chunks + len(c.sim.world.guilds)
    await churn_until(c, lambda: c.sim.hub.counters["member_chunks"] >= every_guild, "every guild chunked")
    c.sim.set_chunk_faults()


async def lost_chunk(c: Cluster, pg: PgServer) -> None:
    c.sim.set_chunk_faults(drop=1)
    await c.sim.send_invalid_session(resumable=False)
    await churn_until(c, lambda: c.sim.hub.counters["member_chunks_dropped"] >= 1, "a chunk dropped")
    await c.churn(events=1200)  # discord.py waits 5 s for the chunk that never comes


async def close_4000(c: Cluster, pg: PgServer) -> None:
    await c.sim.close_connections(4000)
    await counter_rises(c, "resume")


async def close_4009(c: Cluster, pg: PgServer) -> None:
    await c.sim.close_connections(4009)
    await counter_rises(c, "identify")


async def dispatches_delayed(c: Cluster, pg: PgServer) -> None:
    c.sim.delay_dispatches(1.5)


async def dispatches_duplicated(c: Cluster, pg: PgServer) -> None:
    c.sim.duplicate_dispatches(2.0)


# -- a small cluster -----------------------------------------------------------------------------


def two_shard_processes(c: Cluster) -> list[Ingest]:
    return [
        c.ingest_process(f"shard{shard}", DZONE_SHARD_COUNT="2", DZONE_SHARD_IDS=str(shard))
        for shard in (0, 1)
    ]


async def cluster_restarts(c: Cluster, pg: PgServer) -> None:
    shards = {(int(g) >> 22) % 2 for g in c.sim.world.guilds}
    assert shards == {0, 1}, "the seed must put guilds on both shards"
    await c.ingests[1].stop()
    await c.restart_serve(1)
    await c.churn()
    await c.ingests[1].start()
    await counter_rises(c, "identify")


FAULTS = [
    Fault("postgres-restart", postgres_restart, needs_local_pg=True),
    Fault("logins-refused", logins_refused, needs_local_pg=True),
    Fault("connections-cut", connections_cut),
    Fault("listener-killed", listener_killed),
    Fault("listener-frozen", listener_frozen),
    Fault("pooler-restart", pooler_restart, pooled=True),
    Fault("ingest-sigkill", ingest_sigkill, CONVERGE_BUDGET_AFTER_RESTART_S, one_ingest_process),
    Fault("black-hole", black_hole),
    Fault("heartbeat-interval", heartbeat_interval_change),
    Fault("bot-added", bot_added),
    Fault("guild-outage", guild_outage),
    Fault("session-expiry", session_expiry),
    Fault("rest-errors-at-login", rest_errors_at_login, CONVERGE_BUDGET_AFTER_RESTART_S),
    Fault("slow-chunks", slow_chunks),
    Fault("lost-chunk", lost_chunk),
    Fault("close-4000", close_4000),
    Fault("close-4009", close_4009),
    Fault("dispatches-delayed", dispatches_delayed),
    Fault("dispatches-duplicated", dispatches_duplicated),
    Fault(
        "cluster-restarts", cluster_restarts, CONVERGE_BUDGET_AFTER_RESTART_S, two_shard_processes, serves=2
    ),
]


CASES = [
    pytest.param(
        f,
        id=f.name,
        marks=[pytest.mark.xfail(strict=True, reason=f.known_bug)] if f.known_bug else [],
    )
    for f in FAULTS
]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", CASES)
async def test_system_converges_after(fault: Fault, pg: PgServer, database_url: str, tmp_path: Path) -> None:
    if fault.needs_local_pg and pg.local is None:
        pytest.skip("needs the embedded PostgreSQL (unset DATABASE_URL)")
    seed = 100 + FAULTS.index(fault)
    async with contextlib.AsyncExitStack() as stack:
        bouncer = stack.enter_context(pgbouncer(database_url)) if fault.pooled else None
        c = await stack.enter_async_context(
            cluster(
                database_url, tmp_path, seed=seed, ingests=fault.ingests, serves=fault.serves, pooler=bouncer
            )
        )
        await fault.script(c, pg)
        await c.churn()
        # a known bug is shown to be there as soon as it is sure: past the budget and some margin
        give_up = fault.budget + 5 if fault.known_bug else SHOWN_WHEN_LATE_S
        await c.pause_and_converge(fault.name, fault.budget, give_up)
