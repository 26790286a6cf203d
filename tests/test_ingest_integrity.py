"""The ingest under faults: after the fault, pause the traffic, the rows equal the simulator's truth exactly."""

from __future__ import annotations

import time

import asyncpg

from simulator import SimConfig, Simulator
from tests.ingest_helpers import db_view, truth_rows
from tests.test_ingest_gateway import running_worker
from tests.waiting import wait_for


def wrong_rows(truth: dict, seen: dict) -> int:
    """How many (server, user) pairs differ between two views, rows missing on either side included."""
    wrong = 0
    for server_id in set(truth) | set(seen):
        t, s = truth.get(server_id, {}), seen.get(server_id, {})
        wrong += sum(1 for user_id in set(t) | set(s) if t.get(user_id) != s.get(user_id))
    return wrong


async def assert_converges(conn: asyncpg.Connection, sim: Simulator, timeout: float, label: str) -> float:
    """Wait until the rows equal the truth exactly; print and return the time it took."""
    started = time.monotonic()
    last = [-1]

    async def equal() -> bool:
        last[0] = wrong_rows(truth_rows(sim.state()), await db_view(conn))
        return last[0] == 0

    try:
        await wait_for(equal, timeout=timeout, interval=0.1, message=f"{label}: rows equal to the truth")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {last[0]} rows wrong") from None
    seconds = time.monotonic() - started
    print(f"{label}: converged in {seconds:.2f}s")
    return seconds


async def test_no_presence_lost_during_startup_chunking(database_url: str, conn: asyncpg.Connection) -> None:
    # Large guilds are chunked after GUILD_CREATE; a member offline in GUILD_CREATE who comes online
    # before its chunk arrives used to be discarded by discord.py and stored offline.
    async with (
        Simulator(SimConfig(guild_sizes=[3000, 2000, 1000], seed=11, presence_rate=2000)) as sim,
        running_worker(sim, database_url) as worker,
    ):
        await wait_for(lambda: worker.writer.stats.full_syncs >= 3, timeout=60, message="three full syncs")
        sim.pause()
        await assert_converges(conn, sim, timeout=10, label="start-up chunking under a presence storm")
        print("presences:", worker.client.held_presences.counts())
        assert worker.client.held_presences.kept > 0, "the storm never hit a member being chunked"


async def test_no_presence_lost_when_re_identify_chunks_again(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with (
        Simulator(SimConfig(guild_sizes=[2000, 1000], seed=12, presence_rate=2000)) as sim,
        running_worker(sim, database_url) as worker,
    ):
        await wait_for(lambda: worker.writer.stats.full_syncs >= 2, timeout=60, message="first full syncs")
        await sim.send_invalid_session(resumable=False)  # a new session: every guild is chunked again
        await wait_for(lambda: worker.writer.stats.full_syncs >= 4, timeout=60, message="second full syncs")
        sim.pause()
        await assert_converges(conn, sim, timeout=10, label="re-identify under a presence storm")
        assert worker.client.held_presences.kept > 0, "the storm never hit a member being chunked"
