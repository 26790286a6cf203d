"""The ingest under faults: after the fault, pause the traffic, the rows equal the simulator's truth exactly."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ingest.worker import IngestError, IngestWorker
from simulator import SimConfig, Simulator
from tests.ingest_helpers import db_view, free_port, truth_rows
from tests.pg import PgServer
from tests.test_ingest_gateway import running_worker, settings_for
from tests.waiting import wait_for


def wrong_rows(truth: dict[str, Any], seen: dict[str, Any]) -> int:
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


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.json()


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_refused_logins_make_the_ingest_not_ready_then_it_recovers_exactly(
    pg: PgServer, database_url: str, conn: asyncpg.Connection
) -> None:
    if pg.local is None:
        pytest.skip("needs the embedded PostgreSQL to rewrite its pg_hba.conf")
    port = free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    async with (
        Simulator(SimConfig(guilds=2, members=300, seed=13, presence_rate=200, churn=5)) as sim,
        running_worker(sim, database_url, ingest_http_port=port) as worker,
        aiohttp.ClientSession() as http,
    ):

        async def ready_is(status: int) -> Any:
            code, body = await get_json(http, readyz)
            return body if code == status else None

        await wait_for(lambda: ready_is(200), timeout=30, message="/readyz 200 after start")
        await conn.close()  # refused logins end every session, the test's too
        with pg.refuse_logins():
            body = await wait_for(lambda: ready_is(503), timeout=10, message="/readyz 503 while refused")
            assert body["database"]["ok"] is False, body

            async def refused_login_reported() -> Any:
                body = await ready_is(503)
                return body if body and body["database"]["permanent"] else None

            body = await wait_for(refused_login_reported, timeout=10, message="the refused login in /readyz")
            assert any("InvalidAuthorizationSpecification" in reason for reason in body["reasons"]), body
            # The storm goes on: rows pile up and the writer keeps retrying (with backoff, not spinning).
            await wait_for(lambda: worker.writer.health.outage_s > 4, timeout=10, message="a 4 s outage")
            assert 3 <= worker.writer.health.failures_in_a_row < 40, worker.writer.health
            assert not any(task.done() for task in worker.tasks), "a task of the worker ended"
        allowed = time.monotonic()
        await wait_for(lambda: ready_is(200), timeout=15, message="/readyz 200 after logins are allowed")
        print(f"ready again {time.monotonic() - allowed:.2f}s after logins were allowed")
        sim.pause()
        fresh = await asyncpg.connect(database_url, timeout=10)
        try:
            await assert_converges(fresh, sim, timeout=10, label="after refused logins")
        finally:
            await fresh.close()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            metrics = scrape(await response.text())
        assert metrics[("dzone_ingest_database_failures_total", ())] >= 3
        assert metrics[("dzone_ingest_database_recoveries_total", ())] >= 1
        assert metrics[("dzone_ingest_database_outage_seconds_total", ())] > 4
        assert metrics[("dzone_ingest_database_up", ())] == 1
        assert metrics[("dzone_ingest_rows_committed_total", ())] == worker.writer.stats.rows_committed
        assert metrics[("dzone_ingest_full_syncs_total", ())] >= 2
        assert metrics[("dzone_ingest_events_total", (("event", "presence_update"),))] > 0
        assert metrics[("dzone_ingest_commit_seconds_count", ())] == worker.writer.stats.batches
        assert metrics[("dzone_ingest_shard_ready", (("shard", "0"),))] == 1
        assert ("dzone_ingest_gateway_latency_seconds", (("shard", "0"),)) in metrics
        assert metrics[("dzone_ingest_pending_rows", ())] == 0
        code, alive = await get_json(http, f"http://127.0.0.1:{port}/healthz")
        assert code == 200 and alive["alive"] is True


async def test_a_worker_task_that_ends_stops_the_worker_loudly(database_url: str) -> None:
    async with Simulator(SimConfig(guilds=1, members=20, seed=14)) as sim:
        worker = IngestWorker(settings_for(sim, database_url))
        stop = asyncio.Event()
        with capture_logs() as logs:
            run = asyncio.create_task(worker.run(stop))
            await wait_for(lambda: worker.writer.stats.full_syncs >= 1, timeout=30, message="a full sync")
            worker.writer.tasks[0].cancel()  # the writer dies (as a bug outside its retry loop would)
            with pytest.raises(IngestError, match="ingest-writer"):
                await asyncio.wait_for(run, timeout=30)
        assert any(entry["event"] == "ingest_task_ended" for entry in logs), logs
        assert worker.client.is_closed()


async def test_status_shows_each_shard_of_a_running_ingest(database_url: str) -> None:
    from dzone.status import read_status, render

    async with (
        Simulator(SimConfig(guilds=4, members=10, seed=15, recommended_shards=2)) as sim,
        running_worker(sim, database_url),
    ):

        async def both_ready() -> Any:
            status = await read_status(database_url)
            states = {row.shard_id: (row.state, row.shard_count) for row in status.ingest_shards}
            return status if states == {0: ("ready", 2), 1: ("ready", 2)} else None

        status = await wait_for(both_ready, timeout=30, message="two ready shards in ingest_heartbeat")
        text = render(status)
        assert "Ingest shards (2)" in text and f":{os.getpid()}" in text, text
