"""Discord's own limits in the simulator, against the real discord.py: huge guilds without presences,
RATE_LIMITED member requests, the identify budget (session_start_limit) and IDENTIFY pacing; the rules
themselves as pure functions; the control API and CLI that switch them. docs/simulator.md.
"""

from __future__ import annotations

import aiohttp
import discord
import pytest
from click.testing import CliRunner

from simulator import SimConfig, Simulator
from simulator.cli import simulate
from simulator.limits import IdentifyPacing, MemberRequestLimit, SessionStartBudget
from simulator.testing import SIM_TOKEN, connected_client
from tests.waiting import wait_for

# -- the rules --------------------------------------------------------------------------------------


def test_session_start_budget_counts_down_refuses_when_spent_and_refills_at_reset() -> None:
    budget = SessionStartBudget(total=3, remaining=3, window_s=100.0)
    assert budget.payload(0.0) == {"total": 3, "remaining": 3, "reset_after": 100_000, "max_concurrency": 1}
    assert budget.spend(10.0) and budget.spend(20.0) and budget.spend(30.0)
    assert not budget.spend(40.0)  # spent: nothing more, nothing counted
    assert budget.payload(50.0)["remaining"] == 0
    assert budget.payload(50.0)["reset_after"] == 60_000  # the window opened at the first IDENTIFY (10 s)
    assert budget.spend(110.0)  # the window ended: refilled
    assert budget.payload(110.0)["remaining"] == 2


def test_identify_pacing_allows_one_identify_per_bucket_per_interval() -> None:
    pacing = IdentifyPacing(interval_s=5.0)
    assert pacing.allow(0, 2, 0.0)
    assert pacing.allow(1, 2, 0.1)  # another bucket (1 % 2)
    assert not pacing.allow(2, 2, 1.0)  # bucket 0 again within 5 s
    assert pacing.allow(2, 2, 5.0)
    assert IdentifyPacing(interval_s=0.0).allow(0, 1, 0.0) and IdentifyPacing(0.0).allow(0, 1, 0.0)


def test_member_request_limit_is_per_guild_per_window() -> None:
    limit = MemberRequestLimit(window_s=30.0)
    assert limit.retry_after(1, 0.0) is None
    assert limit.retry_after(2, 1.0) is None  # another guild
    assert limit.retry_after(1, 10.0) == pytest.approx(20.0)
    assert limit.retry_after(1, 29.0) == pytest.approx(1.0)  # a refused request does not move the window
    assert limit.retry_after(1, 30.0) is None
    off = MemberRequestLimit(window_s=0.0)
    assert off.retry_after(1, 0.0) is None and off.retry_after(1, 0.1) is None


# -- with the real discord.py ----------------------------------------------------------------------


async def test_a_guild_over_the_presence_threshold_has_no_presences_until_chunked_with_them() -> None:
    config = SimConfig(guild_sizes=[300, 40], seed=3, presence_threshold=100, start_paused=True)
    async with Simulator(config) as sim:
        huge_id, small_id = list(sim.world.guilds)
        online = {m.user.id for m in sim.world.guilds[huge_id].members.values() if m.user.status != "offline"}
        assert len(online) > 10
        payloads: list[dict[str, object]] = []

        async with connected_client(sim, chunk_guilds_at_startup=False) as client:
            huge = client.get_guild(huge_id)
            assert huge is not None and huge.large and huge.member_count == 300
            # only the bot came with GUILD_CREATE, not the online members (as on Discord above 75,000)
            assert [m.id for m in huge.members] == [sim.world.bot_user.id]
            small = client.get_guild(small_id)
            assert small is not None and len(small.members) == 40  # under the threshold: whole
            # discord.py's own chunking asks without presences: every member offline
            members = await huge.chunk()
            assert len(members) == 300
            assert {str(m.status) for m in members if m.id != sim.world.bot_user.id} == {"offline"}
            # asked with presences (and the intent), the chunks carry them
            ws = client._get_websocket(huge_id)

            original = client._connection.parsers["GUILD_MEMBERS_CHUNK"]

            def on_chunk(data: dict[str, object]) -> None:
                payloads.append(data)
                original(data)

            client._connection.parsers["GUILD_MEMBERS_CHUNK"] = on_chunk
            sim.set_limits(member_request_window_s=0)
            await ws.request_chunks(huge_id, "", limit=0, presences=True, nonce="with-presences")
            await wait_for(lambda: len(payloads) == 1, 10, message="the chunk with presences")
        presences = payloads[0]["presences"]
        assert isinstance(presences, list)
        assert {int(p["user"]["id"]) for p in presences} == online


async def test_a_second_all_member_request_within_the_window_gets_rate_limited() -> None:
    config = SimConfig(guild_sizes=[300], seed=4, member_request_window_s=30.0, start_paused=True)
    async with Simulator(config) as sim, connected_client(sim) as client:
        guild_id = next(iter(sim.world.guilds))
        guild = client.get_guild(guild_id)
        assert guild is not None and guild.chunked  # discord.py's startup request was accepted
        limited: list[dict[str, object]] = []
        client._connection.parsers["RATE_LIMITED"] = limited.append  # discord.py 2.7 has no parser for it
        chunks = sim.hub.counters["member_chunks"]
        ws = client._get_websocket(guild_id)
        await ws.request_chunks(guild_id, "", limit=0, nonce="again")
        await wait_for(lambda: limited, 10, message="RATE_LIMITED")
        event = limited[0]
        assert event["opcode"] == 8 and event["meta"] == {"guild_id": str(guild_id), "nonce": "again"}
        retry_after = event["retry_after"]
        assert isinstance(retry_after, float) and 25 < retry_after <= 30
        assert sim.hub.counters["member_chunks"] == chunks  # nothing was sent
        assert sim.hub.counters["member_requests_rate_limited"] == 1
        # a query or user_ids request is not limited
        members = await guild.query_members(user_ids=[sim.world.bot_user.id])
        assert [m.id for m in members] == [sim.world.bot_user.id]
        # switched off from the control API, the same request is answered
        async with aiohttp.ClientSession() as http:
            reply = await http.post(f"{sim.control_base}/limits", json={"member_request_window_s": 0})
            assert reply.status == 200 and (await reply.json())["member_request_window_s"] == 0
        await ws.request_chunks(guild_id, "", limit=0, nonce="later")
        await wait_for(lambda: sim.hub.counters["member_chunks"] > chunks, 10, message="the chunk")


async def test_session_start_limit_is_counted_reported_and_past_it_the_token_is_reset() -> None:
    config = SimConfig(guild_sizes=[5], session_start_total=2, bot_token=SIM_TOKEN)
    async with Simulator(config) as sim:
        async with connected_client(sim) as client:
            limits = await client.http.get_bot_gateway()
            assert limits[2] == {
                "total": 2,
                "remaining": 1,
                "reset_after": limits[2]["reset_after"],
                "max_concurrency": 1,
            }
            assert 86_000_000 < limits[2]["reset_after"] <= 86_400_000
        async with connected_client(sim):
            pass
        assert sim.hub.limits.session_start.remaining == 0
        # one more IDENTIFY: Discord ends every session and resets the token; logins fail until restored
        with pytest.raises(discord.ConnectionClosed) as closed:
            async with connected_client(sim, client_class=discord.AutoShardedClient, shard_count=1):
                pass
        assert closed.value.code == 4004
        assert sim.hub.counters["identify_over_budget"] == 1 and sim.hub.limits.token_reset
        with pytest.raises(discord.LoginFailure):
            async with connected_client(sim):
                pass
        sim.set_limits(token_reset=False, session_start_remaining=1)
        async with connected_client(sim):
            assert sim.hub.counters["identify"] == 3


async def test_identify_too_fast_for_its_bucket_gets_invalid_session_and_discord_py_retries() -> None:
    config = SimConfig(guild_sizes=[5, 5, 5, 5], seed=2, recommended_shards=2, identify_interval_s=1.0)
    async with Simulator(config) as sim:
        # no pause between the two shards' IDENTIFYs, one bucket (max_concurrency 1): the second is refused
        async with connected_client(sim, client_class=discord.AutoShardedClient) as client:
            assert isinstance(client, discord.AutoShardedClient) and set(client.shards) == {0, 1}
            assert sim.hub.counters["identify_too_fast"] >= 1
            assert sim.hub.counters["identify"] == 2
        # two buckets: both shards identify at once
        sim.set_limits(max_concurrency=2)
        sim.hub.limits.identify_pacing = IdentifyPacing(interval_s=1.0)
        too_fast = sim.hub.counters["identify_too_fast"]
        async with connected_client(sim, client_class=discord.AutoShardedClient):
            assert sim.hub.counters["identify_too_fast"] == too_fast


async def test_limits_route_validates_and_answers_the_limits() -> None:
    async with Simulator(SimConfig(guild_sizes=[3])) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.control_base}/limits"
        for bad in (
            {"presence_threshold": 0},
            {"member_request_window_s": -1},
            {"session_start_remaining": "x"},
            {"token_reset": 1},
            {"unknown": 1},
        ):
            reply = await http.post(url, json=bad)
            assert reply.status == 400, bad
        reply = await http.post(
            url, json={"presence_threshold": 1000, "session_start_total": 50, "max_concurrency": 4}
        )
        body = await reply.json()
        assert body["presence_threshold"] == 1000
        assert (
            body["session_start_limit"]["total"] == 50 and body["session_start_limit"]["max_concurrency"] == 4
        )
        stats = await (await http.get(f"{sim.control_base}/stats")).json()
        assert stats["limits"] == body


def test_cli_options_set_the_limits() -> None:
    captured: list[SimConfig] = []

    async def fake_serve(config: SimConfig) -> None:
        captured.append(config)

    import simulator.cli as cli

    original = cli._serve
    cli._serve = fake_serve
    try:
        result = CliRunner().invoke(
            simulate,
            [
                "--presence-threshold=200",
                "--member-request-window=5",
                "--session-start-total=20",
                "--max-concurrency=16",
                "--identify-interval=5",
            ],
        )
    finally:
        cli._serve = original
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert (config.presence_threshold, config.member_request_window_s) == (200, 5.0)
    assert (config.session_start_total, config.max_concurrency, config.identify_interval_s) == (20, 16, 5.0)
