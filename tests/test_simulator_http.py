"""The simulator over the wire without discord.py: REST, OAuth2, the /_sim/ API and the raw gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from simulator import SimConfig, Simulator
from simulator.gateway import INTENT_GUILDS, INTENT_MEMBERS, INTENT_PRESENCES
from tests.waiting import wait_for

ALL_INTENTS = INTENT_GUILDS | INTENT_MEMBERS | INTENT_PRESENCES
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


class RawGateway:
    """A minimal gateway client that decodes zlib-stream the way discord.py does."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, compressed: bool) -> None:
        self.ws = ws
        self.compressed = compressed
        self.inflator = zlib.decompressobj()

    async def receive(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=10)
        if self.compressed:
            assert message.type is aiohttp.WSMsgType.BINARY, message
            assert message.data.endswith(b"\x00\x00\xff\xff"), "each frame is one Z_SYNC_FLUSH"
            payload: dict[str, Any] = orjson.loads(self.inflator.decompress(message.data))
            return payload
        assert message.type is aiohttp.WSMsgType.TEXT, message
        text_payload: dict[str, Any] = orjson.loads(message.data)
        return text_payload

    async def send(self, op: int, data: Any) -> None:
        await self.ws.send_str(orjson.dumps({"op": op, "d": data}).decode())

    async def identify(self, token: str = "tok", intents: int = ALL_INTENTS, **extra: Any) -> None:
        await self.send(2, {"token": token, "intents": intents, "properties": {}, **extra})

    async def dispatches_until(self, event: str) -> list[dict[str, Any]]:
        seen = []
        while True:
            payload = await self.receive()
            seen.append(payload)
            if payload.get("t") == event:
                return seen

    async def close_code(self) -> int | None:
        message = await self.ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        return self.ws.close_code


async def open_gateway(http: aiohttp.ClientSession, sim: Simulator, *, compressed: bool) -> RawGateway:
    query = "?v=10&encoding=json" + ("&compress=zlib-stream" if compressed else "")
    ws = await http.ws_connect(sim.gateway_url + query)
    gateway = RawGateway(ws, compressed)
    hello = await gateway.receive()
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == sim.config.heartbeat_interval_ms
    return gateway


async def test_rest_answers_with_exact_json_content_type_and_checks_the_bot_token(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimConfig(guild_sizes=[3], bot_token="good", recommended_shards=3)) as sim:
        bot = {"Authorization": "Bot good"}
        async with http.get(f"{sim.api_base}/users/@me", headers=bot) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "application/json"
            assert (await response.json())["id"] == str(sim.world.bot_user.id)
        async with http.get(f"{sim.api_base}/users/@me", headers={"Authorization": "Bot bad"}) as response:
            assert response.status == 401 and response.headers["Content-Type"] == "application/json"
        async with http.get(f"{sim.api_base}/gateway/bot", headers=bot) as response:
            body = await response.json()
            assert body["url"] == sim.gateway_url and body["shards"] == 3
        async with http.get(f"{sim.api_base}/gateway") as response:
            assert (await response.json()) == {"url": sim.gateway_url}
        async with http.get(f"{sim.api_base}/guilds/1/audit-logs", headers=bot) as response:
            assert response.status == 404 and "does not implement" in (await response.json())["message"]


async def test_oauth_bearer_tokens_answer_their_user(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimConfig(guild_sizes=[5], seed=1)) as sim:
        guild = sim.state()["guilds"][0]
        member = next(m for m in guild["members"] if not m["bot"])
        member_token = sim.issue_oauth_token(int(member["user_id"]))
        async with http.post(f"{sim.control_base}/oauth/token", json={}) as response:
            stranger = await response.json()
        for token, user_id in ((member_token, member["user_id"]), (stranger["token"], stranger["user_id"])):
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{sim.api_base}/users/@me", headers=headers) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "application/json"
                assert (await response.json())["id"] == user_id
        assert stranger["user_id"] not in {m["user_id"] for m in guild["members"]}
        async with http.get(
            f"{sim.api_base}/users/@me", headers={"Authorization": "Bearer nope"}
        ) as response:
            assert response.status == 401


async def test_oauth_rate_limit_answers_429_with_retry_after_and_calls_are_counted(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimConfig(guild_sizes=[2], seed=1)) as sim:
        token = sim.issue_oauth_token(None)
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{sim.control_base}/oauth/rate-limit", json={"retry_after": 30}) as response:
            assert response.status == 200
        async with http.post(f"{sim.control_base}/oauth/rate-limit", json={"retry_after": "x"}) as response:
            assert response.status == 400
        async with http.get(f"{sim.api_base}/users/@me", headers=headers) as response:
            assert response.status == 429 and 29 < float(response.headers["Retry-After"]) <= 30
            assert (await response.json())["retry_after"] > 29
        sim.rate_limit_oauth(0)
        async with http.get(f"{sim.api_base}/users/@me", headers=headers) as response:
            assert response.status == 200
        async with http.get(f"{sim.control_base}/stats") as response:
            assert (await response.json())["oauth_calls"] == 2 == sim.oauth_calls


async def test_control_api_reads_the_truth_and_injects_changes(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimConfig(guild_sizes=[10, 10], seed=2, presence_rate=5)) as sim:
        base = sim.control_base
        guild = sim.state()["guilds"][0]
        user_id = next(m["user_id"] for m in guild["members"] if not m["bot"])
        async with http.post(f"{base}/pause") as response:
            assert response.status == 200 and sim.paused
        async with http.get(f"{base}/state") as response:
            assert await response.json() == orjson.loads(orjson.dumps(sim.state()))
        body = {"guild_id": guild["id"], "user_id": user_id, "status": "dnd"}
        async with http.post(f"{base}/presence", json=body) as response:
            assert response.status == 200
        assert sim.world.users[int(user_id)].status == "dnd"
        role = next(r for r in guild["roles"] if r["name"] != "@everyone")
        async with http.post(
            f"{base}/roles/color", json={**body, "role_id": role["id"], "color": "#abcdef"}
        ) as r:
            assert (
                r.status == 200
                and sim.world.guilds[int(guild["id"])].roles[int(role["id"])].color == 0xABCDEF
            )
        async with http.post(
            f"{base}/members/add", json={"guild_id": guild["id"], "username": "zed_42"}
        ) as r:
            added = await r.json()
            assert r.status == 200 and added["username"] == "zed_42" and added["role_color"] == "#99aab5"
        async with http.post(f"{base}/members/update", json={**body, "nick": "Nick ✨"}) as r:
            assert (await r.json())["display_name"] == "Nick ✨"
        async with http.post(
            f"{base}/guilds/rename", json={"guild_id": guild["id"], "name": "Nouveau nom"}
        ) as r:
            assert r.status == 200 and sim.state()["guilds"][0]["name"] == "Nouveau nom"
        # bad input: a clear error, nothing changed
        for path, payload, status in (
            ("presence", {**body, "status": "asleep"}, 400),
            ("presence", {**body, "guild_id": "123"}, 404),
            ("presence", {"guild_id": guild["id"]}, 400),
            ("members/remove", {"guild_id": guild["id"], "user_id": "42"}, 404),
            ("roles/color", {**body, "role_id": role["id"], "color": 0x1000000}, 400),
        ):
            async with http.post(f"{base}/{path}", json=payload) as r:
                assert r.status == status and (await r.json())["error"], (path, payload)
        async with http.post(f"{base}/presence", data=b"{not json") as r:
            assert r.status == 400
        assert sim.world.users[int(user_id)].status == "dnd"
        async with http.post(f"{base}/resume") as response:
            assert not sim.paused
        async with http.get(f"{base}/stats") as response:
            assert (await response.json())["paused"] is False


@pytest.mark.parametrize("compressed", [True, False], ids=["zlib-stream", "text"])
async def test_raw_gateway_session(http: aiohttp.ClientSession, compressed: bool) -> None:
    async with Simulator(SimConfig(guild_sizes=[2_500], seed=3)) as sim:
        gateway = await open_gateway(http, sim, compressed=compressed)
        await gateway.identify(large_threshold=250)
        frames = await gateway.dispatches_until("GUILD_CREATE")
        ready, guild_create = frames[0], frames[-1]
        assert ready["t"] == "READY" and ready["s"] == 1 and guild_create["s"] == 2
        assert ready["d"]["resume_gateway_url"].endswith("/gateway/resume")
        guild = guild_create["d"]
        assert guild["large"] is True and guild["member_count"] == 2_500 and len(guild["members"]) < 2_500
        assert {p["status"] for p in guild["presences"]} <= {"online", "idle", "dnd"}
        assert any(r["colors"]["primary_color"] for r in guild["roles"])

        await gateway.send(1, 2)
        assert (await gateway.receive())["op"] == 11

        await gateway.send(
            8, {"guild_id": guild["id"], "query": "", "limit": 0, "presences": True, "nonce": "n1"}
        )
        chunks = [await gateway.receive() for _ in range(3)]
        assert [c["d"]["chunk_index"] for c in chunks] == [0, 1, 2]
        assert {c["d"]["chunk_count"] for c in chunks} == {3} and {c["d"]["nonce"] for c in chunks} == {"n1"}
        assert sum(len(c["d"]["members"]) for c in chunks) == 2_500
        assert [c["s"] for c in chunks] == [3, 4, 5]
        online = sum(m.user.status != "offline" for m in sim.world.guilds[int(guild["id"])].members.values())
        assert sum(len(c["d"]["presences"]) for c in chunks) == online

        known = guild["members"][0]["user"]["id"]
        await gateway.send(8, {"guild_id": guild["id"], "user_ids": [known, "1"], "limit": 0, "nonce": "n2"})
        lookup = (await gateway.receive())["d"]
        assert [m["user"]["id"] for m in lookup["members"]] == [known] and lookup["not_found"] == ["1"]

        await sim.set_presence(int(guild["id"]), int(known), "idle")
        presence = await gateway.receive()
        assert presence["t"] == "PRESENCE_UPDATE" and presence["s"] == 7 and presence["d"]["status"] == "idle"
        await gateway.ws.close()


@pytest.mark.parametrize(
    ("payloads", "code"),
    [
        ([b"{oops"], 4002),
        ([orjson.dumps({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}})], 4003),
        ([orjson.dumps({"op": 2, "d": {"token": "wrong", "intents": 1}})], 4004),
        ([orjson.dumps({"op": 2, "d": {"token": "right", "intents": INTENT_PRESENCES}})], 4014),
        ([orjson.dumps({"op": 2, "d": {"token": "right", "intents": 1, "shard": [2, 2]}})], 4010),
        ([orjson.dumps({"op": 2, "d": {"token": "right", "intents": 1}})] * 2, 4005),
        ([orjson.dumps({"op": 99, "d": None})], 4001),
    ],
    ids=["decode", "not-authenticated", "bad-token", "disallowed-intent", "bad-shard", "twice", "unknown-op"],
)
async def test_protocol_violations_close_with_discords_codes(
    http: aiohttp.ClientSession, payloads: list[bytes], code: int
) -> None:
    config = SimConfig(guild_sizes=[3], bot_token="right", privileged_intents=frozenset({"members"}))
    async with Simulator(config) as sim:
        gateway = await open_gateway(http, sim, compressed=False)
        for payload in payloads:
            await gateway.ws.send_str(payload.decode())
        while True:
            message = await gateway.ws.receive(timeout=10)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert gateway.ws.close_code == code


async def test_resume_with_an_unknown_session_is_refused_with_invalid_session(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimConfig(guild_sizes=[3])) as sim:
        gateway = await open_gateway(http, sim, compressed=True)
        await gateway.send(6, {"token": "t", "session_id": "nope", "seq": 3})
        refused = await gateway.receive()
        assert refused["op"] == 9 and refused["d"] is False
        await gateway.ws.close()


def test_dzone_simulate_prints_the_urls_and_stops_on_ctrl_c() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dzone",
            "simulate",
            "--port",
            "0",
            "--guild-sizes",
            "3,20",
            "--seed",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        api_line = process.stdout.readline().strip()
        gateway_line = process.stdout.readline().strip()
        assert api_line.startswith("DZONE_DISCORD_API_BASE=http://127.0.0.1:") and api_line.endswith(
            "/api/v10"
        )
        assert gateway_line.startswith("DZONE_DISCORD_GATEWAY_URL=ws://127.0.0.1:") and gateway_line.endswith(
            "/gateway"
        )
        state_url = api_line.split("=", 1)[1].removesuffix("/api/v10") + "/_sim/state"
        import urllib.request

        with urllib.request.urlopen(state_url, timeout=10) as response:
            state = orjson.loads(response.read())
        assert [g["member_count"] for g in state["guilds"]] == [3, 20]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_scenario_runs_at_roughly_the_configured_rate() -> None:
    async with Simulator(SimConfig(guild_sizes=[500], presence_rate=400, seed=6)) as sim:
        started = time.monotonic()
        await wait_for(lambda: sim.changes_applied >= 400, timeout=10, message="400 scenario changes")
        elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 5, f"400 changes at 400/s took {elapsed:.2f}s"


async def test_channels_carry_discords_permission_fields_and_change_through_control_routes(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, seed=9)) as sim:
        control = sim.control_base
        gateway = await open_gateway(http, sim, compressed=False)
        await gateway.identify()
        guild_create = (await gateway.dispatches_until("GUILD_CREATE"))[-1]["d"]
        async with http.get(f"{control}/state") as resp:
            truth = (await resp.json())["guilds"][0]
        gid = truth["id"]
        by_name = {c["name"]: c for c in truth["channels"]}
        everyone = next(r for r in truth["roles"] if r["id"] == gid)
        assert int(everyone["permissions"]) & (1 << 10)  # @everyone may view by default
        assert all("permissions" in r for r in truth["roles"])
        assert by_name["staff-room"]["permission_overwrites"][0] == {
            "id": gid,
            "type": 0,
            "allow": "0",
            "deny": str(1 << 10),
        }
        category, child = by_name["Moderators"], by_name["mod-log"]
        assert category["type"] == 4 and child["parent_id"] == category["id"]
        assert child["permission_overwrites"] == category["permission_overwrites"]  # synced
        assert by_name["after-dark"]["nsfw"] is True
        assert by_name["thread-chat"]["type"] == 11 and by_name["thread-chat"]["parent_id"]
        # GUILD_CREATE carries them as Discord does: threads apart from channels
        sent = {c["id"]: c for c in guild_create["channels"]}
        assert {t["id"] for t in guild_create["threads"]} == {
            c["id"] for c in truth["channels"] if c["type"] == 11
        }
        assert (
            sent[by_name["staff-room"]["id"]]["permission_overwrites"]
            == by_name["staff-room"]["permission_overwrites"]
        )

        async def post(route: str, **body: Any) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{control}/{route}", json={"guild_id": gid, **body}) as resp:
                return resp.status, await resp.json()

        status, updated = await post(
            "channels/update",
            channel_id=by_name["welcome"]["id"],
            permission_overwrites=[{"id": gid, "type": 0, "allow": "0", "deny": "1024"}],
            nsfw=True,
        )
        assert status == 200 and updated["nsfw"] and updated["permission_overwrites"][0]["deny"] == "1024"
        event = (await gateway.dispatches_until("CHANNEL_UPDATE"))[-1]["d"]
        assert event["id"] == by_name["welcome"]["id"] and event["nsfw"] is True
        status, created = await post("channels/create", name="fresh", parent_id=category["id"])
        assert status == 200 and created["parent_id"] == category["id"]
        assert (await gateway.dispatches_until("CHANNEL_CREATE"))[-1]["d"]["name"] == "fresh"
        assert (await post("channels/delete", channel_id=created["id"]))[0] == 200
        assert (await gateway.dispatches_until("CHANNEL_DELETE"))[-1]["d"]["id"] == created["id"]
        assert (await post("roles/permissions", role_id=gid, permissions="0"))[0] == 200
        role_event = (await gateway.dispatches_until("GUILD_ROLE_UPDATE"))[-1]["d"]
        assert role_event["role"]["id"] == gid and role_event["role"]["permissions"] == "0"
        # bad requests are refused with a clear error
        for route, body, code in [
            ("channels/update", {"channel_id": "1"}, 404),
            (
                "channels/update",
                {"channel_id": by_name["welcome"]["id"], "permission_overwrites": [{"id": gid, "type": 5}]},
                400,
            ),
            ("channels/update", {"channel_id": by_name["thread-chat"]["id"], "nsfw": True}, 400),
            ("channels/create", {"name": "t", "type": 11}, 400),
            ("channels/create", {"name": "c", "type": 4, "parent_id": category["id"]}, 400),
            ("roles/permissions", {"role_id": gid, "permissions": "-1"}, 400),
            (
                "message",
                {"channel_id": category["id"], "user_id": truth["members"][0]["user_id"], "content": "x"},
                400,
            ),
        ]:
            status, answer = await post(route, **body)
            assert (status, bool(answer.get("error"))) == (code, True), (route, body, answer)
        await gateway.ws.close()
