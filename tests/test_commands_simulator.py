"""The simulator's application-command routes on their own: registration, INTERACTION_CREATE to the
guild's shard, the 3 s callback deadline, follow-ups and edits, and the control routes' validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simulator import SimConfig, Simulator
from simulator.interactions import CALLBACK_DEADLINE_S
from simulator.testing import SIM_TOKEN, connected_client

BOT = {"Authorization": f"Bot {SIM_TOKEN}"}
DZONE = [
    {"name": "dzone", "description": "d", "options": [{"name": "hide-me", "type": 1, "description": "h"}]}
]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(
        SimConfig(guilds=2, members=5, seed=3, presence_rate=0, message_rate=0, churn=0)
    ) as s:
        yield s


async def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body, headers=BOT) as resp:
        return resp.status, await resp.json()


async def test_registration_replaces_the_commands_and_gives_them_ids(sim: Simulator) -> None:
    app = f"{sim.api_base}/applications/{sim.world.application_id}"
    status, answer = await _call("PUT", f"{app}/commands", DZONE)
    assert status == 200 and answer[0]["name"] == "dzone" and answer[0]["id"].isdigit()
    assert (await _call("GET", f"{app}/commands"))[1] == answer
    assert (await _call("PUT", f"{app}/commands", []))[1] == []
    assert sim.interactions.global_commands == [] and sim.interactions.registrations == 2
    gid = next(iter(sim.world.guilds))
    status, answer = await _call("PUT", f"{app}/guilds/{gid}/commands", DZONE)
    assert status == 200 and answer[0]["guild_id"] == str(gid)
    assert (await _call("PUT", f"{app}/guilds/123/commands", DZONE))[0] == 404
    assert (await _call("PUT", f"{sim.api_base}/applications/1/commands", DZONE))[0] == 404
    assert (await _call("PUT", f"{app}/commands", {"name": "x"}))[0] == 400
    assert (await _call("PUT", f"{app}/commands", [{"description": "no name"}]))[0] == 400


async def test_control_invoke_checks_its_input(sim: Simulator) -> None:
    gid = next(iter(sim.world.guilds))
    member = next(u for u, m in sim.world.guilds[gid].members.items() if not m.user.bot)
    invoke = f"{sim.control_base}/interactions/invoke"
    body = {"guild_id": gid, "user_id": member, "command": "dzone hide-me"}
    status, answer = await _call("POST", invoke, body)
    assert status == 404 and "no command 'dzone'" in answer["error"]
    sim.interactions.global_commands = [{"name": "dzone", "id": "1"}]
    status, answer = await _call("POST", invoke, body)
    assert status == 400 and "no gateway session" in answer["error"]
    assert (await _call("POST", invoke, {**body, "command": "a b c"}))[0] == 400
    assert (await _call("POST", invoke, {**body, "options": {"x": [1]}}))[0] == 400
    assert (await _call("POST", invoke, {**body, "user_id": 5}))[0] == 404
    assert (await _call("GET", f"{sim.control_base}/interactions/42"))[0] == 404


async def test_callback_once_within_the_deadline_then_follow_ups(sim: Simulator) -> None:
    sim.interactions.global_commands = [{"name": "dzone", "id": "1"}]
    gid = next(iter(sim.world.guilds))
    member = next(u for u, m in sim.world.guilds[gid].members.items() if not m.user.bot)
    async with connected_client(sim):  # a plain discord.py client: it receives, answers nothing
        record = sim.interactions.invoke(gid, member, "dzone hide-me", {}, permissions=32)
        callback = f"{sim.api_base}/interactions/{record.id}/{record.token}/callback"
        assert (await _call("POST", f"{sim.api_base}/interactions/{record.id}/wrong/callback", {"type": 4}))[
            0
        ] == 404
        status, answer = await _call("POST", callback, {"type": 5, "data": {"flags": 64}})
        assert status == 200 and answer["interaction"]["response_message_loading"] is True
        assert record.deferred and record.ephemeral and record.text is None
        assert (await _call("POST", callback, {"type": 4, "data": {"content": "again"}}))[0] == 400
        hook = f"{sim.api_base}/webhooks/{sim.world.application_id}/{record.token}"
        status, message = await _call("POST", hook, {"content": "done", "flags": 64})
        assert status == 200 and await record.answer(timeout=1) == "done"
        await _call("PATCH", f"{hook}/messages/{message['id']}", {"content": "edited"})
        assert record.text == "edited"
        status, truth = await _call("GET", f"{sim.control_base}/interactions/{record.id}")
        assert truth["deferred"] and truth["text"] == "edited" and truth["refused"] == ["a second callback"]

        late = sim.interactions.invoke(gid, member, "dzone hide-me")
        late.sent_at -= CALLBACK_DEADLINE_S + 0.1
        status, answer = await _call(
            "POST", f"{sim.api_base}/interactions/{late.id}/{late.token}/callback", {"type": 4, "data": {}}
        )
        assert status == 404 and answer["code"] == 10062
        assert late.callback_type is None and late.refused
