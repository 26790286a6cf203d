"""Channel privacy end to end: the simulator's channels, the real discord.py ingest, PostgreSQL, a serve
and a real WebSocket viewer. Chat reaches the viewer exactly from the channels the rule allows.

To show that a message did NOT arrive, a later marker message that must arrive is posted: the relay keeps
order, so the forbidden one would have come before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import discord

from simulator import SimConfig, Simulator
from simulator.payloads import GuildTruth
from simulator.world import EVERYONE_PERMISSIONS, VIEW_CHANNEL
from tests.test_ingest_gateway import running_worker, wait_equal
from tests.test_serve_support import Viewer, running
from tests.waiting import wait_for


class Chat:
    """One guild's channels by name, a visible author, and a viewer joined to the guild."""

    def __init__(self, sim: Simulator, viewer: Viewer, guild: GuildTruth, author: int) -> None:
        self.sim = sim
        self.viewer = viewer
        self.gid = int(guild["id"])
        self.ids = {c["name"]: int(c["id"]) for c in guild["channels"]}
        self.author = author
        self.markers = 0

    async def post(self, channel: str, text: str) -> None:
        await self.sim.send_message(self.gid, self.ids[channel], self.author, text)

    async def seen_until_marker(self, channel: str = "general-marker") -> list[tuple[str, str]]:
        """Post a marker in a relayed channel; return (channel id, text) of every chat frame before it."""
        self.markers += 1
        marker = f"marker {self.markers}"
        await self.post(channel, marker)
        seen: list[tuple[str, str]] = []
        while True:
            frame = await self.viewer.recv(timeout=20)
            if frame["type"] != "message":
                continue
            data = frame["data"]
            assert frame["server"] == str(self.gid) and data["uid"] == str(self.author), frame
            if data["message"] == marker:
                assert data["channel"] == str(self.ids[channel]), frame
                return seen
            seen.append((data["channel"], data["message"]))

    async def control(self, route: str, **body: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.sim.control_base}/{route}", json={"guild_id": str(self.gid), **body}
            ) as resp,
        ):
            answer: dict[str, Any] = await resp.json()
            assert resp.status == 200, answer
            return answer


async def stored_channels(conn: asyncpg.Connection, gid: int) -> dict[str, tuple[bool, bool | None]]:
    records = await conn.fetch(
        "SELECT channel_id, public, relay FROM discord_channels WHERE server_id = $1", str(gid)
    )
    return {r["channel_id"]: (r["public"], r["relay"]) for r in records}


@contextlib.asynccontextmanager
async def chat_world(
    database_url: str, conn: asyncpg.Connection, seed: int
) -> AsyncIterator[tuple[Chat, Any]]:
    """Simulator + ingest + serve + one viewer; a public channel named ``general-marker`` for markers."""
    async with Simulator(SimConfig(guilds=1, members=12, seed=seed)) as sim:
        guild = sim.state()["guilds"][0]
        gid = int(guild["id"])
        sim.engine.create_channel(gid, "general-marker")
        author = next(m for m in guild["members"] if not m["bot"])
        await sim.set_presence(gid, int(author["user_id"]), "online")  # the serve shows online members
        async with running_worker(sim, database_url) as worker:
            await wait_equal(conn, sim)
            async with running(database_url) as server, Viewer.open(server) as viewer:
                await viewer.expect("server-list")
                await viewer.join(str(gid))
                yield Chat(sim, viewer, sim.state()["guilds"][0], int(author["user_id"])), worker


async def test_each_kind_of_channel_is_relayed_exactly_when_the_public_could_read_it(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with chat_world(database_url, conn, seed=21) as (chat, worker):
        ids = chat.ids
        ordinary = next(iter(ids))  # the scenario's first channel: no overwrites
        expected_public = {
            "staff-room": False,  # @everyone denied, a staff role allowed
            "mod-log": False,  # synced child of the private category
            "after-dark": False,  # NSFW
            "welcome": True,  # a deny for another role only (and @everyone may not send)
            ordinary: True,
        }
        rows = await wait_for(lambda: stored_channels(conn, chat.gid), message="channel rows")
        for name, public in expected_public.items():
            assert rows[str(ids[name])] == (public, None), name
        assert str(ids["Moderators"]) not in rows and str(ids["thread-chat"]) not in rows  # category, thread
        # our rule agrees with discord.py's own resolution for @everyone on every channel
        guild = worker.client.get_guild(chat.gid)
        for channel in guild.channels:
            if not isinstance(channel, discord.CategoryChannel):
                everyone = channel.permissions_for(guild.default_role)
                assert rows[str(channel.id)][0] == (everyone.view_channel and not channel.is_nsfw()), (
                    channel.name
                )

        for name in (
            "staff-room",
            "mod-log",
            "after-dark",
            "welcome",
            ordinary,
            "thread-chat",
            "staff-thread",
        ):
            await chat.post(name, f"in {name}")
        assert await chat.seen_until_marker() == [
            (str(ids["welcome"]), "in welcome"),
            (str(ids[ordinary]), f"in {ordinary}"),
            (str(ids[ordinary]), "in thread-chat"),  # a thread's chat shows as its parent channel's
        ]

        # readable chat: mentions resolved from the ingest's cache, a private channel's name withheld
        other = next(
            m
            for m in chat.sim.state()["guilds"][0]["members"]
            if not m["bot"] and m["user_id"] != str(chat.author)
        )
        role = next(r for r in chat.sim.state()["guilds"][0]["roles"] if r["id"] != str(chat.gid))
        await chat.post(
            ordinary,
            f"hi <@{other['user_id']}> <@&{role['id']}> <#{ids['welcome']}> <#{ids['staff-room']}> "
            "<@1> <:pog:123> <a:wave:456>\nbye",
        )
        assert await chat.seen_until_marker() == [
            (
                str(ids[ordinary]),
                f"hi @{other['display_name']} @{role['name']} #welcome #unknown-channel @unknown-user :pog: :wave: bye",
            )
        ]


async def test_privacy_changes_take_effect_live_and_the_operator_override_works_both_ways(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with chat_world(database_url, conn, seed=22) as (chat, _worker):
        ids = chat.ids
        general = next(iter(ids))
        await wait_for(lambda: stored_channels(conn, chat.gid), message="channel rows")

        # flipped private mid-stream (control route -> CHANNEL_UPDATE): the next message is not relayed.
        # (A message sharing a flush with a later change of its channel follows the change: docs/ingest.md.)
        await chat.post(general, "before the flip")
        assert await chat.seen_until_marker() == [(str(ids[general]), "before the flip")]
        await chat.control(
            "channels/update",
            channel_id=str(ids[general]),
            permission_overwrites=[{"id": str(chat.gid), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}],
        )
        await chat.post(general, "after the flip")
        assert await chat.seen_until_marker() == []
        # and public again; NSFW on makes it private again
        await chat.control("channels/update", channel_id=str(ids[general]), permission_overwrites=[])
        await chat.post(general, "public again")
        assert await chat.seen_until_marker() == [(str(ids[general]), "public again")]
        started = time.monotonic()
        await chat.control("channels/update", channel_id=str(ids[general]), nsfw=True)
        await chat.post(general, "now nsfw")
        await wait_for(
            lambda: conn.fetchval(
                "SELECT NOT public FROM discord_channels WHERE channel_id = $1", str(ids[general])
            ),
            message="NSFW channel no longer public",
        )
        print(f"channel made NSFW -> its row private in {(time.monotonic() - started) * 1000:.0f} ms")
        assert await chat.seen_until_marker() == []

        # the operator's override, both ways, from its commit
        await conn.execute(
            "UPDATE discord_channels SET relay = TRUE WHERE server_id = $1 AND channel_id = $2",
            str(chat.gid),
            str(ids["staff-room"]),
        )
        await conn.execute(
            "UPDATE discord_channels SET relay = FALSE WHERE server_id = $1 AND channel_id = $2",
            str(chat.gid),
            str(ids["welcome"]),
        )
        await chat.post("welcome", "welcome, relay off")
        await chat.post("staff-room", "staff, relay on")
        assert await chat.seen_until_marker() == [(str(ids["staff-room"]), "staff, relay on")]
        # a channel event re-reads the channels but never touches the operator's column
        await chat.control("channels/update", channel_id=str(ids["staff-room"]), name="staff-lounge")
        await wait_for(
            lambda: conn.fetchval(
                "SELECT name = 'staff-lounge' AND relay FROM discord_channels WHERE channel_id = $1",
                str(ids["staff-room"]),
            ),
            message="renamed, relay kept",
        )
        await conn.execute("UPDATE discord_channels SET relay = NULL WHERE server_id = $1", str(chat.gid))
        await chat.post("staff-room", "staff, following Discord again")
        assert await chat.seen_until_marker() == []

        # a channel created and messaged at once; a deleted channel's row goes
        created = await chat.control("channels/create", name="fresh")
        await chat.sim.send_message(chat.gid, int(created["id"]), chat.author, "in a brand-new channel")
        assert await chat.seen_until_marker() == [(created["id"], "in a brand-new channel")]
        thread = await chat.control("channels/create", name="new-thread", type=11, parent_id=created["id"])
        await chat.sim.send_message(chat.gid, int(thread["id"]), chat.author, "in a new thread")
        assert await chat.seen_until_marker() == [(created["id"], "in a new thread")]
        await chat.control("channels/delete", channel_id=created["id"])
        await wait_for(
            lambda: conn.fetchval(
                "SELECT count(*) = 0 FROM discord_channels WHERE channel_id = $1", created["id"]
            ),
            message="deleted channel's row gone",
        )

        # @everyone loses VIEW_CHANNEL guild-wide (GUILD_ROLE_UPDATE): nothing is public any more
        await chat.control(
            "roles/permissions", role_id=str(chat.gid), permissions=str(EVERYONE_PERMISSIONS & ~VIEW_CHANNEL)
        )
        await conn.execute(
            "UPDATE discord_channels SET relay = TRUE WHERE channel_id = $1", str(ids["after-dark"])
        )  # the marker's channel for now, by the operator's choice
        await chat.post("welcome", "welcome, guild closed")
        assert await chat.seen_until_marker("after-dark") == []
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM discord_channels WHERE server_id = $1 AND public", str(chat.gid)
            )
            == 0
        )
        await chat.control("roles/permissions", role_id=str(chat.gid), permissions=str(EVERYONE_PERMISSIONS))
        await chat.post("welcome", "welcome, guild open")
        assert await chat.seen_until_marker() == [(str(ids["welcome"]), "welcome, guild open")]
