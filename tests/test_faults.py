"""The fault suite: each fault injected into the whole system while it churns, then exact convergence.

For every fault: the simulator churns (presences, joins, leaves, renames, role colours), the real ingest
writes, the serve relays to real viewers; the fault is injected, the storm goes on, then everything
pauses and ``discord_users`` must equal the simulator's truth for every member and every viewer's map
the database, within 5 s (10 s when an ingest restarted). Harness: tests/cluster.py; docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ingest.health import readiness
from simulator.rest import RestFault
from simulator.testing import SIM_TOKEN
from tests.cluster import (
    CONVERGE_BUDGET_AFTER_RESTART_S,
    CONVERGE_BUDGET_S,
    Cluster,
    Ingest,
    IngestProcess,
    InProcessIngest,
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
    sim: dict[str, Any] = field(default_factory=dict)  # more SimConfig fields (Discord's limits)


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
    c.sim.end_all_sessions()
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


# -- Discord's own limits (issue 23) -------------------------------------------------------------

HUGE_THRESHOLD = 400  # the cluster's guilds (500 members) are over it: GUILD_CREATE without presences
MEMBER_REQUEST_WINDOW_S = 10.0  # the rate-limited case's window (Discord: 30 s)
IDENTIFY_RESERVE = 3


def worker_of(ingest: Ingest) -> Any:
    assert isinstance(ingest, InProcessIngest) and ingest.worker is not None
    return ingest.worker


async def huge_guild_start(c: Cluster, pg: PgServer) -> None:
    """The ingest starts again on guilds over the presence threshold: statuses come with the chunks."""
    assert all(len(g.members) > HUGE_THRESHOLD for g in c.sim.world.guilds.values())
    await c.ingests[0].stop()
    await c.churn()  # statuses change while it is away: only the chunks can tell it
    c.ingests[0] = c.in_process_ingest(shard_count=1)
    started = time.monotonic()
    await c.ingests[0].start()
    client = worker_of(c.ingests[0]).client
    guild_ids = list(c.sim.world.guilds)
    await churn_until(
        c, lambda: all(client.chunk_progress.complete(g) for g in guild_ids), "every guild chunked"
    )
    print(
        f"\nhuge-guild-start: every member's status downloaded {time.monotonic() - started:.2f}s after the start"
    )


async def rate_limited_members(c: Cluster, pg: PgServer) -> None:
    """A lost chunk while all-member requests are limited: the ingest asks again when retry_after ends."""
    client = worker_of(c.ingests[0]).client
    c.sim.set_limits(member_request_window_s=MEMBER_REQUEST_WINDOW_S)
    c.sim.set_chunk_faults(drop=1)
    since = time.monotonic()
    await c.sim.send_invalid_session(resumable=False)
    await churn_until(c, lambda: c.sim.hub.counters["member_chunks_dropped"] >= 1, "a chunk dropped")
    await churn_until(c, lambda: c.sim.hub.counters["member_requests_rate_limited"] >= 1, "a request refused")
    # when each guild's members arrived whole again (polled while the storm goes on)
    completed: dict[int, float] = {}
    guild_ids = list(c.sim.world.guilds)

    def all_complete() -> bool:
        for g in guild_ids:
            if g not in completed and client.chunk_progress.complete(g):
                completed[g] = time.monotonic()
        return len(completed) == len(guild_ids)

    await churn_until(c, all_complete, "every guild's members complete", timeout=90)
    log = [entry for entry in c.sim.hub.member_request_log if entry[0] >= since]
    delays = []
    for guild_id in guild_ids:
        mine = [entry for entry in log if entry[1] == guild_id]
        refusals = [entry for entry in mine if entry[3] is not None]
        for before, after in itertools.pairwise(mine):
            assert before[3] is None or after[3] is None, f"guild {guild_id}: a request refused twice: {mine}"
        if refusals:
            at, _, _, retry_after = refusals[-1]
            assert retry_after is not None
            delay = completed[guild_id] - at
            assert delay <= retry_after + 5, (
                f"guild {guild_id} synced {delay:.1f}s after RATE_LIMITED ({retry_after}s)"
            )
            delays.append((delay, retry_after))
    assert delays, "no guild was rate limited"
    figures = ", ".join(f"{d:.2f}s (retry_after {r:.2f}s)" for d, r in delays)
    print(f"\nrate-limited-members: synced after RATE_LIMITED in {figures}")
    c.sim.set_chunk_faults()


async def identify_budget(c: Cluster, pg: PgServer) -> None:
    """A bad token for a while, then the right one with the budget at its reserve until a reset."""
    await c.ingests[0].stop()
    identifies, left = c.sim.hub.counters["identify"], c.sim.hub.limits.session_start.remaining
    settings = c.in_process_ingest(shard_count=1, identify_reserve=IDENTIFY_RESERVE).settings
    c.ingests[0] = InProcessIngest(
        settings.model_copy(update={"discord_bot_token": SecretStr("not-the-token")})
    )
    await c.ingests[0].start()
    worker = worker_of(c.ingests[0])
    await churn_until(c, lambda: worker.client.refusal is not None, "the ingest refused")
    await c.churn(events=600)  # a while: a supervisor would have restarted it many times by now
    state = readiness(worker.client, worker.writer, 1000)
    assert not state.ready and "DISCORD_BOT_TOKEN" in state.body["reasons"][0], state.body
    assert c.ingests[0].failure() is None, "a refused ingest stays up (no restart loop)"
    assert c.sim.hub.counters["identify"] == identifies, "a refused token spent an IDENTIFY"
    await c.ingests[0].stop()
    # the right token, while only the reserve is left: it waits for the reset instead of spending it
    c.sim.set_limits(session_start_remaining=IDENTIFY_RESERVE, session_start_reset_after_s=3.0)
    c.ingests[0] = InProcessIngest(settings)
    await c.ingests[0].start()
    client = worker_of(c.ingests[0]).client
    await churn_until(c, lambda: client.identify_waiting is not None, "the ingest waiting for the budget")
    state = readiness(client, worker_of(c.ingests[0]).writer, 1000)
    assert not state.ready and any("identify budget" in r for r in state.body["reasons"]), state.body
    assert c.sim.hub.counters["identify"] == identifies
    await counter_rises(c, "identify")
    spent = c.sim.hub.counters["identify"] - identifies
    print(
        f"\nidentify-budget: {spent} IDENTIFY spent (bad token: 0; {left} left before, reserve {IDENTIFY_RESERVE})"
    )
    assert spent == 1


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


# A case's seed is 100 + its index here (its world, so which guilds are on which shard): append new
# cases at the end, so that no other case gets another world.
FAULTS = [
    Fault("postgres-restart", postgres_restart, needs_local_pg=True),
    Fault("logins-refused", logins_refused, needs_local_pg=True),
    Fault("connections-cut", connections_cut),
    Fault("listener-killed", listener_killed),
    Fault("listener-frozen", listener_frozen),
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
    Fault(
        "huge-guild-start",
        huge_guild_start,
        CONVERGE_BUDGET_AFTER_RESTART_S,
        sim={"presence_threshold": HUGE_THRESHOLD},
    ),
    Fault("rate-limited-members", rate_limited_members),
    Fault("identify-budget", identify_budget, CONVERGE_BUDGET_AFTER_RESTART_S, sim={"bot_token": SIM_TOKEN}),
    Fault("pooler-restart", pooler_restart, pooled=True),
]


CASES = [pytest.param(f, id=f.name) for f in FAULTS]


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
                database_url,
                tmp_path,
                seed=seed,
                ingests=fault.ingests,
                serves=fault.serves,
                pooler=bouncer,
                sim_options=fault.sim,
            )
        )
        await fault.script(c, pg)
        await c.churn()
        await c.pause_and_converge(fault.name, fault.budget)
