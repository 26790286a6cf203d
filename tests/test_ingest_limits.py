"""The ingest under Discord's own limits: the budget and rate-limit rules (pure), RATE_LIMITED honoured
with its metric, huge guilds' statuses, and permanent refusals (bad token, intents) that stay up, not
ready, saying why (/readyz, log, ``dzone status``) instead of an IDENTIFY loop. docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import asyncpg
import discord
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingest.health import IngestCollector, readiness
from ingest.limits import (
    RETRY_MARGIN_S,
    IdentifyBudget,
    IdentifyPacer,
    MemberRequestLimits,
    budget_reason,
    identify_wait_s,
)
from ingest.members import STATUS_UNKNOWN, GuildMembers
from ingest.payloads import MemberPayload
from ingest.worker import IngestWorker, permanent_refusal
from simulator import SimConfig, Simulator
from tests.ingest_helpers import free_port
from tests.test_ingest_cli import TOKEN, _dzone, _env
from tests.test_ingest_gateway import running_worker, settings_for, wait_equal
from tests.waiting import wait_for

# -- the rules --------------------------------------------------------------------------------------


def test_identify_waits_for_the_reset_rather_than_spend_the_reserve() -> None:
    budget = IdentifyBudget(total=1000, remaining=11, reset_after_s=3600.0, max_concurrency=1)
    assert identify_wait_s(budget, reserve=10) == 0.0
    low = IdentifyBudget(total=1000, remaining=10, reset_after_s=3600.0, max_concurrency=1)
    assert identify_wait_s(low, reserve=10) == 3600.0
    assert identify_wait_s(IdentifyBudget(1000, 0, -5.0, 1), reserve=0) == 0.0  # already reset
    assert identify_wait_s(IdentifyBudget(1000, 1, 60.0, 1), reserve=0) == 0.0  # no reserve: spend it
    reason = budget_reason(low, 10, 3600.0)
    assert "10 of 1000" in reason and "3600 s" in reason and "reserve" in reason


def test_identify_pacer_spaces_each_bucket_and_lets_other_buckets_go() -> None:
    pacer = IdentifyPacer(interval_s=5.0)
    assert pacer.wait_s(0, 16, 0.0) == 0.0
    pacer.identified(0, 16, 0.0)
    assert pacer.wait_s(1, 16, 0.0) == 0.0  # bucket 1
    assert pacer.wait_s(16, 16, 1.0) == 4.0  # bucket 0 again
    assert pacer.wait_s(16, 16, 5.0) == 0.0
    assert IdentifyPacer(interval_s=0.0).wait_s(0, 1, 0.0) == 0.0


def test_member_requests_wait_exactly_the_retry_after_of_their_guild() -> None:
    limits = MemberRequestLimits()
    assert limits.wait_s(1, 0.0) == 0.0
    limits.refused(1, 7.5, now=10.0)
    assert limits.wait_s(1, 10.0) == pytest.approx(7.5 + RETRY_MARGIN_S)
    assert limits.wait_s(2, 10.0) == 0.0  # per guild
    assert limits.wait_s(1, 17.6 + RETRY_MARGIN_S) == 0.0
    assert limits.wait_s(1, 11.0) == 0.0  # forgotten once over
    limits.refused(1, 2.0, now=20.0)
    limits.refused(1, 1.0, now=20.5)  # an earlier end never shortens a later one
    assert limits.wait_s(1, 21.0) == pytest.approx(1.0 + RETRY_MARGIN_S)
    assert limits.refusals == 3 and limits.waited_s == 10.5


def test_permanent_refusals_are_told_apart_from_failures_a_restart_cures() -> None:
    assert "DISCORD_BOT_TOKEN" in (permanent_refusal(discord.LoginFailure("401")) or "")
    assert "4014" in (permanent_refusal(discord.PrivilegedIntentsRequired(0)) or "")
    assert permanent_refusal(RuntimeError("writer died")) is None
    assert permanent_refusal(OSError("connection reset")) is None


# -- with the simulator and the real discord.py ----------------------------------------------------


async def test_rate_limited_member_request_is_asked_again_after_retry_after(
    database_url: str, conn: asyncpg.Connection
) -> None:
    config = SimConfig(guild_sizes=[600], seed=9, member_request_window_s=8.0, start_paused=True)
    async with Simulator(config) as sim, running_worker(sim, database_url) as worker:
        await wait_equal(conn, sim)
        # IDENTIFY again (5 s later: one bucket): discord.py's chunk request comes within the window
        await sim.send_invalid_session(resumable=False)
        await wait_for(
            lambda: worker.client.member_limits.refusals >= 1, timeout=20, message="RATE_LIMITED seen"
        )
        await wait_for(
            lambda: sim.hub.counters["member_chunks"] >= 2, timeout=20, message="the members sent again"
        )
        refused = [entry for entry in sim.hub.member_request_log if entry[3] is not None]
        accepted_after = [entry for entry in sim.hub.member_request_log if entry[0] > refused[0][0]]
        assert len(refused) == 1 and accepted_after and accepted_after[0][3] is None  # never refused twice
        retry_after = refused[0][3]
        assert retry_after is not None
        assert accepted_after[0][0] - refused[0][0] >= retry_after  # not sooner than Discord said
        await wait_equal(conn, sim)
        registry = CollectorRegistry()
        registry.register(IngestCollector(worker.client, worker.writer))
        metrics = generate_latest(registry).decode()
        assert "dzone_ingest_member_requests_rate_limited_total 1.0" in metrics
        assert "dzone_ingest_member_requests_retry_after_seconds_total" in metrics


async def test_statuses_of_a_huge_guild_are_exact_right_after_the_start(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # over the presence threshold GUILD_CREATE has no presences: they come with the chunks we ask for
    config = SimConfig(guild_sizes=[1500, 30], seed=12, presence_threshold=1000, start_paused=True)
    async with Simulator(config) as sim, running_worker(sim, database_url):
        await wait_equal(conn, sim)
        online = await conn.fetchval("SELECT count(*) FROM discord_users WHERE status <> 'offline'")
        assert online > 100


async def test_missing_intents_stay_up_not_ready_with_one_identify_spent(database_url: str) -> None:
    config = SimConfig(guild_sizes=[5], privileged_intents=frozenset({"members"}))
    async with Simulator(config) as sim:
        worker = IngestWorker(settings_for(sim, database_url))
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        try:
            await wait_for(lambda: worker.client.refusal is not None, timeout=20, message="refused")
            assert "4014" in (worker.client.refusal or "") and "PRESENCE" in (worker.client.refusal or "")
            state = readiness(worker.client, worker.writer, 1000)
            assert not state.ready and state.body["reasons"][0].startswith("discord: refused:")
            await asyncio.sleep(0.5)  # would a retry come? (nothing to wait for: there must be none)
            # the refused IDENTIFY was charged to the budget (the session never started), and only it
            budget = sim.hub.limits.session_start
            assert not run.done() and budget.remaining == budget.total - 1
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)  # a clean stop: no exception


async def test_dzone_ingest_with_a_bad_token_stays_up_not_ready_and_says_why(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, bot_token=TOKEN)) as sim:
        port = free_port()
        env = _env(
            DISCORD_BOT_TOKEN="an-old-token",
            DATABASE_URL=database_url,
            DZONE_DISCORD_API_BASE=sim.api_base,
            DZONE_DISCORD_GATEWAY_URL=sim.gateway_url,
            DZONE_INGEST_HTTP_PORT=str(port),
        )
        proc = await _dzone("ingest", env=env)
        try:

            async def not_ready_because_refused() -> bool:
                timeout = aiohttp.ClientTimeout(total=5)
                try:
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{port}/readyz", timeout=timeout) as resp,
                    ):
                        body = await resp.json()
                        return resp.status == 503 and "DISCORD_BOT_TOKEN" in " ".join(body["reasons"])
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(not_ready_because_refused, timeout=30, message="/readyz says refused")
            await wait_for(
                lambda: conn.fetchval("SELECT state FROM ingest_heartbeat WHERE state LIKE 'refused:%'"),
                timeout=30,
                message="the heartbeat says refused",
            )
            status = await _dzone("status", env=_env(DATABASE_URL=database_url))
            out, _ = await asyncio.wait_for(status.communicate(), 30)
            assert "refused: Discord refused DISCORD_BOT_TOKEN" in out.decode(), out.decode()
            assert proc.returncode is None and sim.hub.counters["identify"] == 0
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = err.decode()
        assert proc.returncode == 0, log[-3000:]
        assert "discord_refused" in log and "an-old-token" not in log


def test_a_member_updated_before_its_chunk_takes_the_chunks_status() -> None:
    # A huge guild's GUILD_CREATE has no one: a nick change before the chunk creates the member with a
    # guessed status, which the chunk (a later snapshot) replaces; a status a presence told is kept.
    table = GuildMembers(1)
    table.upsert({"user": {"id": "10", "username": "ann"}, "nick": "Ann | DJ"})
    table.upsert({"user": {"id": "11", "username": "bob"}})
    table.members[11].status = "idle"
    table.members[11].flags &= ~STATUS_UNKNOWN  # as a PRESENCE_UPDATE does
    chunk: list[MemberPayload] = [
        {"user": {"id": "10", "username": "ann"}},
        {"user": {"id": "11", "username": "bob"}},
    ]
    table.add_chunk(chunk, {10: "dnd", 11: "online"})
    assert table.members[10].status == "dnd" and table.members[10].name == "Ann | DJ"
    assert table.members[11].status == "idle"  # told by a presence: kept
    table.upsert({"user": {"id": "10", "username": "ann"}})
    table.add_chunk(chunk, {10: "offline"})
    assert table.members[10].status == "dnd"  # known now: a chunk does not override it
