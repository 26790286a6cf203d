"""The /dzone slash commands end to end: the simulator sends INTERACTION_CREATE to the real discord.py
ingest, the command writes PostgreSQL, the triggers announce it, a real serve's viewer follows; the answer
is read from what the simulator recorded of the interaction's callback and follow-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from ingest.worker import IngestWorker
from simulator import SimConfig, Simulator
from simulator.interactions import MANAGE_GUILD, InteractionRecord
from tests.test_ingest_gateway import running_worker, wait_equal
from tests.test_serve_support import Viewer, db_world, running
from tests.test_visibility_live import until_world
from tests.waiting import wait_for

PUBLIC_URL = "https://town.example.org/"


@dataclass
class Bot:
    """A simulator with the ingest (and its commands) running against it, synced into the database."""

    sim: Simulator
    worker: IngestWorker
    conn: asyncpg.Connection

    def guild(self, index: int = 0) -> tuple[int, list[int]]:
        """A guild's id and its human members' ids."""
        guild = self.sim.state()["guilds"][index]
        return int(guild["id"]), [int(m["user_id"]) for m in guild["members"] if not m["bot"]]

    def use(
        self, guild_id: int, user_id: int, command: str, admin: bool = False, **options: Any
    ) -> InteractionRecord:
        return self.sim.interactions.invoke(
            guild_id, user_id, command, options, permissions=MANAGE_GUILD if admin else 0
        )

    async def answer(
        self, guild_id: int, user_id: int, command: str, admin: bool = False, **options: Any
    ) -> str:
        record = self.use(guild_id, user_id, command, admin, **options)
        text = await record.answer(timeout=15)
        assert record.ephemeral, "every /dzone answer is ephemeral"
        assert not record.refused, record.refused
        return text

    async def audit(self, server_id: str) -> list[tuple[str, str, str]]:
        rows = await self.conn.fetch(
            "SELECT user_id, command, change FROM command_audit WHERE server_id = $1 ORDER BY audit_id",
            server_id,
        )
        return [(r["user_id"], r["command"], r["change"]) for r in rows]


@contextlib.asynccontextmanager
async def bot(
    database_url: str, conn: asyncpg.Connection, config: SimConfig | None = None, **overrides: Any
) -> AsyncIterator[Bot]:
    overrides.setdefault("public_url", PUBLIC_URL)
    async with (
        Simulator(config or SimConfig(guilds=1, members=8, seed=25)) as sim,
        running_worker(sim, database_url, **overrides) as worker,
    ):
        await wait_equal(conn, sim)
        await asyncio.wait_for(sim.interactions.registered.wait(), 10)
        yield Bot(sim, worker, conn)


async def test_commands_are_registered_as_one_dzone_group(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        (command,) = b.sim.interactions.global_commands
        assert command["name"] == "dzone"
        assert command["dm_permission"] is False  # guilds only
        options: list[dict[str, Any]] = command["options"]  # type: ignore[assignment]
        assert {o["name"] for o in options} == {"link", "hide-me", "show-me", "status", "settings"}


async def test_commands_off_registers_none(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn, commands=False) as b:
        assert b.sim.interactions.global_commands == []
        assert b.sim.interactions.registrations == 1


async def test_link_answers_the_town_url_and_never_a_secret(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        text = await b.answer(gid, people[0], "dzone link")
        assert f"{PUBLIC_URL}?s={gid}" in text
        assert "log in" not in text
        await conn.execute(
            "UPDATE discord_servers SET alias = 'cafe', passworded = TRUE, oauth_client_id = '123' "
            "WHERE server_id = $1",
            str(gid),
        )
        text = await b.answer(gid, people[0], "dzone link")
        assert f"{PUBLIC_URL}?s=cafe" in text
        assert "log in with Discord" in text
        assert "123" not in text


async def test_link_without_a_public_url_says_what_to_set(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn, public_url=None) as b:
        gid, people = b.guild()
        assert "DZONE_PUBLIC_URL" in await b.answer(gid, people[0], "dzone link")


@contextlib.asynccontextmanager
async def watched(b: Bot, guild_id: int, **serve_settings: Any) -> AsyncIterator[Viewer]:
    """A real serve with an anonymous viewer of the guild, showing exactly the database's visible rows."""
    async with (
        running(b.worker.settings.database_url, **serve_settings) as server,
        Viewer.open(server) as viewer,
    ):
        await viewer.expect("server-list")
        await viewer.join(str(guild_id))
        await until_world(viewer, await _visible(b, guild_id), timeout=10)
        yield viewer


async def _visible(b: Bot, guild_id: int) -> dict[str, dict[str, Any]]:
    hide_offline = await b.conn.fetchval(
        "SELECT hide_offline FROM discord_servers WHERE server_id = $1", str(guild_id)
    )
    return await db_world(b.conn, str(guild_id), hide_offline)


async def test_hide_me_deletes_the_member_for_viewers_within_a_second_and_show_me_brings_them_back(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        await conn.execute("UPDATE discord_servers SET hide_offline = FALSE WHERE server_id = $1", str(gid))
        async with watched(b, gid) as viewer:
            me = str(people[0])
            assert me in viewer.world
            started = time.monotonic()
            record = b.use(gid, people[0], "dzone hide-me")
            frame = await viewer.until(
                lambda f: f["type"] == "presence" and f["data"].get("delete"), timeout=10
            )
            took = time.monotonic() - started
            print(f"/dzone hide-me -> the viewer's delete: {took * 1000:.0f} ms")
            assert frame["data"]["uid"] == me
            assert took < 1.0, f"the delete took {took:.2f} s"
            assert "hidden from the town" in await record.answer()
            assert me not in viewer.world
            assert (
                await conn.fetchval(
                    "SELECT set_by FROM discord_visibility WHERE server_id = $1 AND value = $2", str(gid), me
                )
                == "member"
            )
            assert "already hidden" in await b.answer(gid, people[0], "dzone hide-me")

            record = b.use(gid, people[0], "dzone show-me")
            frame = await viewer.until(
                lambda f: f["type"] == "presence" and f["data"]["uid"] == me, timeout=10
            )
            assert not frame["data"].get("delete")
            assert "back in the town" in await record.answer()
            await until_world(viewer, await _visible(b, gid), timeout=10)
            assert me in viewer.world
        assert await b.audit(str(gid)) == [
            (me, "/dzone hide-me", "hide_user: hidden themself"),
            (me, "/dzone show-me", "hide_user: showed themself again"),
        ]


async def test_show_me_never_undoes_an_operators_hide(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        me = str(people[1])
        await conn.execute("INSERT INTO discord_visibility VALUES ($1, 'hide_user', $2)", str(gid), me)
        await b.answer(gid, people[1], "dzone hide-me")
        text = await b.answer(gid, people[1], "dzone show-me")
        assert "still leave you out" in text
        assert await conn.fetchval(
            "SELECT hidden FROM discord_users WHERE server_id = $1 AND user_id = $2", str(gid), me
        )
        rules = await conn.fetch("SELECT set_by FROM discord_visibility WHERE server_id = $1", str(gid))
        assert [r["set_by"] for r in rules] == ["operator"]


async def test_settings_refused_without_manage_server(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        for command in ("dzone settings", "dzone status"):
            options = {"passworded": True} if command == "dzone settings" else {}
            text = await b.answer(gid, people[0], command, **options)
            assert "Manage Server" in text
        assert not await conn.fetchval(
            "SELECT passworded FROM discord_servers WHERE server_id = $1", str(gid)
        )
        assert await b.audit(str(gid)) == []


async def test_settings_update_and_cut_viewers_like_the_sql_recipes(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        admin = people[2]
        async with watched(b, gid) as viewer:
            offline = await conn.fetchval(
                "SELECT count(*) FROM discord_users WHERE server_id = $1 AND status = 'offline'", str(gid)
            )
            assert offline, "the seed gives the guild offline members"
            text = await b.answer(gid, admin, "dzone settings", admin=True, hide_offline=False, alias="cafe")
            assert "hide_offline: on -> off" in text and "alias: none -> cafe" in text
            await until_world(viewer, await _visible(b, gid), timeout=10)  # the offline members arrived
            assert len(viewer.world) == len(people)

            text = await b.answer(gid, admin, "dzone settings", admin=True, passworded=True)
            assert "passworded: off -> on" in text
            error = await viewer.until(lambda f: f["type"] == "error", timeout=10)
            print("anonymous viewer after /dzone settings passworded:True:", error)

        assert "taken" not in await b.answer(gid, admin, "dzone settings", admin=True, relay_chat=False)
        assert "cannot be an alias" in await b.answer(gid, admin, "dzone settings", admin=True, alias="123")
        assert "Nothing changed" in await b.answer(gid, admin, "dzone settings", admin=True, alias="cafe")
        assert "alias: cafe -> none" in await b.answer(gid, admin, "dzone settings", admin=True, alias="-")
        row = await conn.fetchrow("SELECT * FROM discord_servers WHERE server_id = $1", str(gid))
        assert (row["hide_offline"], row["passworded"], row["relay_messages"], row["alias"]) == (
            False,
            True,
            False,
            None,
        )
        assert await b.audit(str(gid)) == [
            (str(admin), "/dzone settings", "hide_offline: on -> off"),
            (str(admin), "/dzone settings", "alias: none -> cafe"),
            (str(admin), "/dzone settings", "passworded: off -> on"),
            (str(admin), "/dzone settings", "relay_chat: on -> off"),
            (str(admin), "/dzone settings", "alias: cafe -> none"),
        ]


async def test_status_shows_members_viewers_and_relayed_channels(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        await wait_for(
            lambda: conn.fetchval("SELECT count(*) > 0 FROM discord_channels WHERE server_id = $1", str(gid)),
            timeout=10,
            message="the guild's channels are written",
        )
        await b.answer(gid, people[0], "dzone hide-me")
        await conn.execute(
            "INSERT INTO serve_viewers (instance, server_id, viewers) VALUES ('a:1', $1, 3), ('b:2', $1, 4)",
            str(gid),
        )
        text = await b.answer(gid, people[1], "dzone status", admin=True)
        print(text)
        assert f"Members: {len(people)}" in text
        assert "hidden by rules: 1 (1 of them with /dzone hide-me)" in text
        assert "Viewers now: 7 (on 2 serve processes)" in text
        public = await conn.fetch(
            "SELECT name FROM discord_channels WHERE server_id = $1 AND public ORDER BY name", str(gid)
        )
        assert public and all(f"#{r['name']}" in text for r in public)
        assert "/dzone hide-me" in text  # the last changes


async def test_a_command_on_the_second_shard(database_url: str, conn: asyncpg.Connection) -> None:
    config = SimConfig(guilds=4, members=5, seed=7)
    async with bot(database_url, conn, config, shard_count=2) as b:
        guilds = [b.guild(i) for i in range(4)]
        on_shard_1 = [(gid, people) for gid, people in guilds if (gid >> 22) % 2 == 1]
        assert on_shard_1, "the seed puts a guild on shard 1"
        gid, people = on_shard_1[0]
        assert "hidden from the town" in await b.answer(gid, people[0], "dzone hide-me")
        assert await conn.fetchval(
            "SELECT hidden FROM discord_users WHERE server_id = $1 AND user_id = $2", str(gid), str(people[0])
        )


async def test_a_slow_answer_is_deferred_then_sent(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn, command_defer_after_s=0.5) as b:
        gid, people = b.guild()
        # An operator's transaction holds the server's row: the settings change waits for it.
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM discord_servers WHERE server_id = $1 FOR UPDATE", str(gid))
            record = b.use(gid, people[0], "dzone settings", admin=True, hide_offline=False)
            await wait_for(lambda: record.callback_type is not None, timeout=5, message="deferred")
            assert record.deferred and record.ephemeral
            assert record.callback_s is not None and record.callback_s < 3
            assert record.text is None
        text = await record.answer()
        assert "hide_offline: on -> off" in text
        assert not record.refused
        assert b.worker.commands.runner.deferred == 1


@pytest.mark.parametrize("command", ["dzone link", "dzone status"])
async def test_a_database_outage_is_answered_in_one_line(
    database_url: str, conn: asyncpg.Connection, command: str
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        await conn.execute("ALTER TABLE discord_servers RENAME TO discord_servers_away")
        try:
            text = await b.answer(gid, people[0], command, admin=True)
        finally:
            await conn.execute("ALTER TABLE discord_servers_away RENAME TO discord_servers")
        assert text == "The town's database is not answering right now; please try again in a minute."


async def test_status_counts_the_viewers_the_serve_reports(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()

        async def reported() -> int:
            return int(await conn.fetchval("SELECT coalesce(sum(viewers), 0) FROM serve_viewers"))

        async with watched(b, gid, viewer_report_interval_s=0.1):
            await wait_for(lambda: _is(reported, 1), timeout=10, message="the serve reports its viewer")
            assert "Viewers now: 1\n" in await b.answer(gid, people[0], "dzone status", admin=True)
        assert await reported() == 0, "a serve that closes removes its rows"


async def _is(read: Any, expected: int) -> bool:
    return bool(await read() == expected)


async def test_relay_chat_off_stops_the_chat_at_its_commit(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        await conn.execute("UPDATE discord_servers SET hide_offline = FALSE WHERE server_id = $1", str(gid))
        channel = await wait_for(
            lambda: conn.fetchval(
                "SELECT channel_id FROM discord_channels WHERE server_id = $1 AND public ORDER BY name LIMIT 1",
                str(gid),
            ),
            timeout=10,
            message="a public channel is written",
        )
        async with watched(b, gid) as viewer:
            await b.sim.send_message(gid, int(channel), people[0], "before")
            frame = await viewer.until(lambda f: f["type"] == "message", timeout=10)
            assert frame["data"]["message"] == "before"
            assert "relay_chat: on -> off" in await b.answer(
                gid, people[1], "dzone settings", True, relay_chat=False
            )
            await b.sim.send_message(gid, int(channel), people[0], "after")
            await b.sim.set_presence(gid, people[2], "dnd")  # a marker behind the message
            seen: list[dict[str, Any]] = []

            def marker(f: dict[str, Any]) -> bool:
                seen.append(f)
                return bool(f["type"] == "presence" and f["data"]["uid"] == str(people[2]))

            await viewer.until(marker, timeout=10)
            assert [f for f in seen if f["type"] == "message"] == []
