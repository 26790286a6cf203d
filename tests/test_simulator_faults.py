"""The simulator's Discord faults against the real discord.py, the fault routes over HTTP, and their pure parts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import orjson
import pytest

from simulator import InvalidValueError, SimConfig, Simulator
from simulator.engine import Engine
from simulator.gateway import INTENT_GUILDS, GatewayHub, Session
from simulator.rest import RestApi, RestFault, rest_fault_response
from simulator.scenario import WorldBuilder
from simulator.testing import client_view, connected_client, truth_view, view_differences
from tests.test_simulator_http import ALL_INTENTS
from tests.waiting import wait_for

EVENT_TIMEOUT = 15.0
FAST_BEATS = SimConfig(guild_sizes=[60, 300], seed=21, heartbeat_interval_ms=300)


def offline_world(**config: object) -> tuple[Engine, GatewayHub, Session]:
    """The world, hub and engine of a simulator without sockets, and one session that records dispatches."""
    cfg = SimConfig(**config)  # type: ignore[arg-type]
    builder = WorldBuilder(cfg.seed)
    world = builder.build(cfg)
    hub = GatewayHub(cfg, world)
    session = Session(shard_id=0, shard_count=1, intents=ALL_INTENTS, large_threshold=50, replay_limit=10_000)
    hub.sessions[session.id] = session
    return Engine(world, hub, builder), hub, session


def events(session: Session) -> list[tuple[str, dict[str, Any]]]:
    return [(p["t"], p["d"]) for p in (orjson.loads(frame) for _, frame in session.replay)]


def test_an_outage_sends_one_guild_delete_then_nothing_until_the_current_guild_create() -> None:
    engine, hub, session = offline_world(guild_sizes=[80, 10], seed=3)
    guild_id, other_id = list(engine.world.guilds)
    engine.start_outage(guild_id)
    joined = engine.add_member(guild_id, username="unseen_joiner", status="online")
    engine.rename_guild(guild_id, "Renamed unseen")
    engine.set_presence(other_id, next(iter(engine.world.guilds[other_id].members)), "dnd")
    assert events(session) == [
        ("GUILD_DELETE", {"id": str(guild_id), "unavailable": True}),
        ("PRESENCE_UPDATE", events(session)[1][1]),
    ]
    assert not hub.listening(guild_id, INTENT_GUILDS)
    engine.end_outage(guild_id)
    kind, create = events(session)[-1]
    assert kind == "GUILD_CREATE" and create["unavailable"] is False and create["name"] == "Renamed unseen"
    assert create["large"] and joined["user_id"] in {m["user"]["id"] for m in create["members"]}
    with pytest.raises(InvalidValueError):
        engine.end_outage(guild_id)


def test_bot_added_sends_a_guild_create_without_unavailable() -> None:
    engine, _, session = offline_world(guild_sizes=[5], seed=4)
    added = engine.add_guild(30)
    kind, create = events(session)[-1]
    assert kind == "GUILD_CREATE" and "unavailable" not in create and create["id"] == added["guild_id"]
    assert create["member_count"] == 30 and not create["large"] and len(create["members"]) == 30
    with pytest.raises(InvalidValueError):
        engine.add_guild(0)


def test_rest_faults_are_validated_and_bounded() -> None:
    engine, _, _ = offline_world(guild_sizes=[2])
    rest = RestApi(SimConfig(), engine.world, engine)
    assert rest.queue_faults([RestFault(503), RestFault(429, 0.5)]) == 2
    for bad in (RestFault(404), RestFault(429, -1)):
        with pytest.raises(InvalidValueError):
            rest.queue_faults([bad])
    with pytest.raises(InvalidValueError):
        rest.queue_faults([RestFault(500)] * 99)
    assert len(rest.faults) == 2  # nothing was queued by a refused request


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def humans(sim: Simulator, guild_id: int) -> list[int]:
    return [m.user.id for m in sim.world.guilds[guild_id].members.values() if not m.user.bot]


def flip(sim: Simulator, user_id: int) -> str:
    return "dnd" if sim.world.users[user_id].status != "dnd" else "idle"


def assert_matches_truth(sim: Simulator, client: discord.Client) -> None:
    problems = view_differences(truth_view(sim.state()), client_view(client))
    assert not problems, "\n".join(problems)


async def test_black_hole_is_detected_by_discord_py_which_resumes_and_gets_what_it_missed() -> None:
    async with Simulator(FAST_BEATS) as sim, connected_client(sim, heartbeat_timeout=1.0) as client:
        guild_id = next(iter(sim.world.guilds))
        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        started = time.monotonic()
        assert sim.black_hole() == 1
        for user_id in humans(sim, guild_id)[:20]:
            await sim.set_presence(guild_id, user_id, flip(sim, user_id))
        await resumed
        assert time.monotonic() - started >= 0.9, "nothing may reach the client through a black hole"
        assert sim.hub.counters["resume"] == 1 and sim.hub.counters["identify"] == 1
        await wait_for(lambda: not view_differences(truth_view(sim.state()), client_view(client)))


async def test_heartbeat_interval_is_set_for_new_connections(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimConfig(guild_sizes=[3])) as sim:
        async with http.post(f"{sim.control_base}/faults/heartbeat-interval", json={"interval_ms": 750}) as r:
            assert r.status == 200
        async with http.ws_connect(sim.gateway_url + "?v=10&encoding=json") as ws:
            hello = await ws.receive_json(timeout=10)
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 750


async def test_heartbeat_interval_reaches_discord_py() -> None:
    async with Simulator(SimConfig(guild_sizes=[3], seed=1)) as sim, connected_client(sim) as client:
        sim.set_heartbeat_interval(400)
        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        await sim.drop_connections()
        await resumed
        keep_alive = client.ws._keep_alive
        assert keep_alive is not None and keep_alive.interval == pytest.approx(0.4)


async def test_bot_added_to_a_guild_arrives_live_with_its_members() -> None:
    async with Simulator(SimConfig(guild_sizes=[20], seed=22)) as sim, connected_client(sim) as client:
        joined = client.wait_for("guild_join", timeout=EVENT_TIMEOUT)
        added = await sim.add_guild(400)  # large: discord.py chunks it before guild_join
        guild = await joined
        assert str(guild.id) == added["guild_id"] and guild.chunked
        assert_matches_truth(sim, client)
        user_id = humans(sim, guild.id)[0]
        await sim.set_presence(guild.id, user_id, flip(sim, user_id))
        await wait_for(lambda: not view_differences(truth_view(sim.state()), client_view(client)))


async def test_guild_outage_sends_nothing_then_the_current_guild() -> None:
    async with Simulator(SimConfig(guild_sizes=[30, 30], seed=23)) as sim, connected_client(sim) as client:
        guild_id, other_id = list(sim.world.guilds)
        unavailable = client.wait_for("guild_unavailable", timeout=EVENT_TIMEOUT)
        await sim.start_guild_outage(guild_id)
        assert (await unavailable).id == guild_id
        assert sim.state()["guilds"][0]["unavailable"] is True
        before = dict(sim.hub.dispatched_by_event)
        joined = await sim.add_member(guild_id, username="while_away", status="online")
        await sim.rename_guild(guild_id, "Renamed while away")
        await sim.set_presence(other_id, humans(sim, other_id)[0], "dnd")  # other guilds go on
        assert sim.hub.dispatched_by_event.get("GUILD_MEMBER_ADD", 0) == before.get("GUILD_MEMBER_ADD", 0)
        assert sim.hub.dispatched_by_event["PRESENCE_UPDATE"] == before.get("PRESENCE_UPDATE", 0) + 1
        available = client.wait_for("guild_available", timeout=EVENT_TIMEOUT)
        await sim.end_guild_outage(guild_id)
        guild = await available
        assert not guild.unavailable and guild.name == "Renamed while away"
        assert guild.get_member(int(joined["user_id"])) is not None
        with pytest.raises(Exception, match="not unavailable"):
            await sim.end_guild_outage(guild_id)


async def test_an_unavailable_guild_is_left_out_of_a_new_identify() -> None:
    async with Simulator(SimConfig(guild_sizes=[10, 10], seed=24)) as sim:
        guild_id = next(iter(sim.world.guilds))
        await sim.start_guild_outage(guild_id)
        async with connected_client(sim) as client:
            guild = client.get_guild(guild_id)
            assert guild is not None and guild.unavailable
            available = client.wait_for("guild_available", timeout=EVENT_TIMEOUT)
            await sim.end_guild_outage(guild_id)
            await available
            assert_matches_truth(sim, client)


async def test_ended_sessions_make_the_resume_fail_and_discord_py_identifies_again() -> None:
    async with Simulator(SimConfig(guild_sizes=[40], seed=25)) as sim, connected_client(sim) as client:
        guild_id = next(iter(sim.world.guilds))
        ready_again = client.wait_for("ready", timeout=EVENT_TIMEOUT)
        assert sim.end_all_sessions() == 1
        user_id = humans(sim, guild_id)[0]
        await sim.set_presence(guild_id, user_id, flip(sim, user_id))
        await ready_again
        counters = sim.hub.counters
        assert counters["resume_failed"] == 1 and counters["identify"] == 2 and counters["resume"] == 0
        assert_matches_truth(sim, client)


async def test_rest_5xx_and_429_are_retried_by_discord_py_at_login() -> None:
    async with Simulator(SimConfig(guild_sizes=[5], seed=26)) as sim:
        sim.queue_rest_faults([RestFault(500), RestFault(429, retry_after_s=0.2)])
        started = time.monotonic()
        async with connected_client(sim):
            assert sim.rest.faults_served == 2 and not sim.rest.faults
        # discord.py waited 1 s after the 500 and 0.2 s after the 429
        assert time.monotonic() - started >= 1.2


def test_rest_fault_answers_look_like_discords() -> None:
    limited = rest_fault_response(RestFault(429, retry_after_s=1.5))
    assert limited.status == 429 and limited.headers["Retry-After"] == "1.5"
    assert limited.headers["Via"] and limited.headers["Content-Type"] == "application/json"
    assert rest_fault_response(RestFault(502)).status == 502


async def test_slow_member_chunks_still_complete() -> None:
    async with Simulator(SimConfig(guild_sizes=[300, 300], seed=27)) as sim:
        sim.set_chunk_faults(delay_s=0.4)
        started = time.monotonic()
        async with connected_client(sim) as client:
            assert time.monotonic() - started >= 0.8
            assert all(g.chunked for g in client.guilds)
            assert_matches_truth(sim, client)


async def test_a_lost_member_chunk_leaves_discord_py_with_a_partial_guild() -> None:
    async with Simulator(SimConfig(guild_sizes=[300], seed=28)) as sim:
        sim.set_chunk_faults(drop=1)
        async with connected_client(sim) as client:  # discord.py gives up on the chunk after 5 s
            assert sim.hub.counters["member_chunks_dropped"] == 1
            guild = client.guilds[0]
            assert not guild.chunked and len(guild.members) < len(sim.world.guilds[guild.id].members)


@pytest.mark.parametrize(("code", "resumes"), [(4000, True), (4009, False)])
async def test_server_close_codes(code: int, resumes: bool) -> None:
    async with Simulator(SimConfig(guild_sizes=[30], seed=29)) as sim, connected_client(sim) as client:
        back = client.wait_for("resumed" if resumes else "ready", timeout=EVENT_TIMEOUT)
        assert await sim.close_connections(code) == 1
        await back
        assert sim.hub.counters["resume"] == (1 if resumes else 0)
        assert sim.hub.counters["identify"] == (1 if resumes else 2)
        assert_matches_truth(sim, client)


async def test_delayed_dispatches_arrive_late_and_in_order() -> None:
    async with Simulator(SimConfig(guild_sizes=[50], seed=30)) as sim, connected_client(sim) as client:
        guild_id = next(iter(sim.world.guilds))
        seen: list[tuple[int, str, float]] = []

        async def on_presence_update(before: discord.Member, after: discord.Member) -> None:
            seen.append((after.id, str(after.status), time.monotonic()))

        client.event(on_presence_update)
        started = time.monotonic()
        assert sim.delay_dispatches(1.0) == 1
        sent = []
        for user_id in humans(sim, guild_id)[:10]:
            status = flip(sim, user_id)
            await sim.set_presence(guild_id, user_id, status)
            sent.append((user_id, status))
        await wait_for(lambda: len(seen) == len(sent), timeout=EVENT_TIMEOUT)
        assert [(u, s) for u, s, _ in seen] == sent
        assert min(t for _, _, t in seen) - started >= 0.9


async def test_duplicated_dispatches_arrive_twice() -> None:
    async with Simulator(SimConfig(guild_sizes=[50], seed=31)) as sim, connected_client(sim) as client:
        guild_id = next(iter(sim.world.guilds))
        seen: list[int] = []

        async def on_presence_update(before: discord.Member, after: discord.Member) -> None:
            seen.append(after.id)

        client.event(on_presence_update)
        assert sim.duplicate_dispatches(30) == 1
        users = humans(sim, guild_id)[:5]
        for user_id in users:
            await sim.set_presence(guild_id, user_id, flip(sim, user_id))
        await wait_for(lambda: len(seen) == 2 * len(users), timeout=EVENT_TIMEOUT)
        assert seen == [u for u in users for _ in (0, 1)]
        assert_matches_truth(sim, client)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("faults/heartbeat-interval", {"interval_ms": 10}),
        ("faults/heartbeat-interval", {}),
        ("faults/bot-added", {"size": 0}),
        ("faults/guild-available", {"guild_id": "1"}),
        ("faults/rest", {"status": 404}),
        ("faults/rest", {"status": 429, "retry_after": 600}),
        ("faults/chunks", {"delay_s": -1}),
        ("faults/close", {"code": 1000}),
        ("faults/delay-dispatches", {"seconds": 0}),
        ("faults/duplicate-dispatches", {"seconds": "long"}),
    ],
)
async def test_fault_routes_refuse_bad_input(
    http: aiohttp.ClientSession, route: str, body: dict[str, Any]
) -> None:
    async with (
        Simulator(SimConfig(guild_sizes=[3])) as sim,
        http.post(f"{sim.control_base}/{route}", json=body) as response,
    ):
        assert response.status in (400, 404), await response.text()
        assert "error" in await response.json()


async def test_fault_routes_over_http(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimConfig(guild_sizes=[3, 3])) as sim:
        guild_id = str(next(iter(sim.world.guilds)))

        async def post(route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            async with http.post(f"{sim.control_base}/faults/{route}", json=body or {}) as response:
                assert response.status == 200, await response.text()
                answer: dict[str, Any] = await response.json()
                return answer

        assert (await post("bot-added", {"size": 12}))["member_count"] == 12
        await post("guild-unavailable", {"guild_id": guild_id})
        await post("guild-available", {"guild_id": guild_id})
        assert (await post("rest", {"status": 429, "count": 2, "retry_after": 0.5}))["queued"] == 2
        async with http.get(f"{sim.api_base}/gateway/bot", headers={"Authorization": "Bot t"}) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "0.5"
        await post("chunks", {"delay_s": 0.1, "drop": 2})
        assert (sim.hub.chunk_delay_s, sim.hub.chunks_to_drop) == (0.1, 2)
        for route in ("black-hole", "end-sessions"):
            await post(route)
        await post("close", {"code": 4000})
        await post("delay-dispatches", {"seconds": 1})
        await post("duplicate-dispatches", {"seconds": 1})
        assert len(sim.state()["guilds"]) == 3
