"""The visibility rules end to end: the simulator, the real discord.py ingest, PostgreSQL, a serve and real
WebSocket viewers. An operator's rule (or a member's opt-out role) takes effect for an open viewer at its
commit: the members it hides are deleted from the viewer's map, those it shows again appear with their row,
and while hidden nothing of theirs (presence, chat) is relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from simulator import SimConfig, Simulator
from tests.test_ingest_gateway import running_worker, wait_equal
from tests.test_serve_support import Viewer, db_world, running
from tests.waiting import wait_for

OPT_OUT = "hide me from d-zone"


@dataclass
class Town:
    """One guild in the simulator, synced by the ingest, joined by a viewer; ``fans`` hold role "fans"."""

    sim: Simulator
    conn: asyncpg.Connection
    viewer: Viewer
    server: Any  # the serve
    gid: int
    fans_role: str
    fans: set[str]
    others: set[str]

    @property
    def sid(self) -> str:
        return str(self.gid)

    async def rule(self, kind: str, value: str) -> None:
        await self.conn.execute("INSERT INTO discord_visibility VALUES ($1, $2, $3)", self.sid, kind, value)

    async def unrule(self, kind: str, value: str) -> None:
        await self.conn.execute(
            "DELETE FROM discord_visibility WHERE server_id = $1 AND rule = $2 AND value = $3",
            self.sid,
            kind,
            value,
        )

    async def hidden(self) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT user_id FROM discord_users WHERE server_id = $1 AND hidden", self.sid
        )
        return {r["user_id"] for r in rows}

    async def shows_exactly_the_visible(self, viewer: Viewer | None = None, timeout: float = 10.0) -> None:
        """Read frames until the viewer's map equals the database's visible rows (fails after ``timeout``)."""
        await until_world(viewer or self.viewer, await db_world(self.conn, self.sid, False), timeout)

    async def control(self, route: str, **body: Any) -> dict[str, Any]:
        """A simulator control route over HTTP, as an operator's script would call it."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.sim.control_base}/{route}", json={"guild_id": self.sid, **body}) as resp,
        ):
            answer: dict[str, Any] = await resp.json() if resp.content_length else {}
            assert resp.status == 200, answer
            return answer


async def until_world(viewer: Viewer, expected: dict[str, dict[str, Any]], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while viewer.world != expected:
        remaining = deadline - loop.time()
        try:
            await viewer.recv(timeout=max(remaining, 0.001))
        except TimeoutError:
            extra, missing = set(viewer.world) - set(expected), set(expected) - set(viewer.world)
            raise AssertionError(
                f"the viewer's map is not the visible rows after {timeout}s: extra {extra}, missing {missing}, "
                f"different {[u for u in expected if u in viewer.world and viewer.world[u] != expected[u]]}"
            ) from None


@contextlib.asynccontextmanager
async def town(database_url: str, conn: asyncpg.Connection, seed: int) -> AsyncIterator[Town]:
    async with Simulator(SimConfig(guilds=1, members=10, seed=seed)) as sim:
        guild = sim.state()["guilds"][0]
        gid = int(guild["id"])
        people = [m["user_id"] for m in guild["members"] if not m["bot"]]
        fans = await sim.create_role(gid, "fans")
        for uid in people:  # three fans, the others with no role at all
            await sim.update_member(gid, int(uid), roles=[int(fans["id"])] if uid in people[:3] else [])
        async with running_worker(sim, database_url):
            await wait_equal(conn, sim)
            await conn.execute(
                "UPDATE discord_servers SET hide_offline = FALSE WHERE server_id = $1", str(gid)
            )
            async with running(database_url) as server, Viewer.open(server) as viewer:
                await viewer.expect("server-list")
                await viewer.join(str(gid))
                t = Town(sim, conn, viewer, server, gid, fans["id"], set(people[:3]), set(people[3:]))
                await t.shows_exactly_the_visible()
                assert set(viewer.world) == set(people)
                yield t


async def test_ingest_writes_the_guilds_roles_and_follows_their_changes(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with town(database_url, conn, seed=31) as t:
        truth = {r["id"]: r["name"] for r in t.sim.state()["guilds"][0]["roles"]}

        async def stored() -> dict[str, str]:
            rows = await conn.fetch("SELECT role_id, name FROM discord_roles WHERE server_id = $1", t.sid)
            return {r["role_id"]: r["name"] for r in rows}

        assert await stored() == truth
        role_ids = await conn.fetchval(
            "SELECT role_ids FROM discord_users WHERE server_id = $1 AND user_id = $2", t.sid, min(t.fans)
        )
        assert role_ids == [t.fans_role]
        created = await t.control("roles/create", name="new role")
        await t.control("roles/rename", role_id=t.fans_role, name="former fans")
        truth |= {created["id"]: "new role", t.fans_role: "former fans"}
        await wait_for(lambda: _equal(stored, truth), message="role rows follow create and rename")
        await t.control("roles/delete", role_id=created["id"])
        del truth[created["id"]]
        await wait_for(lambda: _equal(stored, truth), message="role rows follow a delete")


async def _equal(read: Any, expected: object) -> bool:
    return bool(await read() == expected)


async def test_each_rule_hides_and_shows_members_live_for_an_open_viewer(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with town(database_url, conn, seed=32) as t:
        somebody = min(t.others)
        cases = [
            ("hide_user", somebody, {somebody}),
            ("exclude_role", t.fans_role, t.fans),
            ("exclude_role", "fans", t.fans),
            ("opt_out_role", t.fans_role, t.fans),
            ("opt_out_role", "fans", t.fans),
            ("include_role", t.fans_role, t.others),
            ("include_role", "fans", t.others),
        ]
        for kind, value, hidden in cases:
            before = dict(t.viewer.world)
            await t.rule(kind, value)
            assert await t.hidden() == hidden, (kind, value)
            await t.shows_exactly_the_visible()
            assert set(t.viewer.world) == set(before) - hidden, (kind, value)
            # A viewer who joins now gets a snapshot without them.
            async with Viewer.open(t.server) as late:
                await late.expect("server-list")
                await late.join(t.sid)
                assert set(late.world) == set(before) - hidden, (kind, value)
            await t.unrule(kind, value)
            assert await t.hidden() == set()
            await t.shows_exactly_the_visible()
            assert t.viewer.world == before, (kind, value)  # back, each with its row


async def test_a_hidden_members_presence_and_chat_are_not_relayed(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with town(database_url, conn, seed=33) as t:
        hidden, visible = sorted(t.others)[:2]
        channel = int(next(c["id"] for c in t.sim.state()["guilds"][0]["channels"] if c["type"] == 0))
        await t.rule("hide_user", hidden)
        await t.shows_exactly_the_visible()
        assert hidden not in t.viewer.world

        await t.sim.set_presence(t.gid, int(hidden), "dnd")
        await t.sim.send_message(t.gid, channel, int(hidden), "from the hidden member")
        await t.sim.set_presence(t.gid, int(visible), "dnd")
        await t.sim.send_message(t.gid, channel, int(visible), "marker")
        # Chat is relayed in order, so anything of the hidden member's would come before the marker.
        about_hidden = []
        while True:
            frame = await t.viewer.recv(timeout=20)
            if frame["data"].get("uid") == hidden:
                about_hidden.append(frame)
            if frame["type"] == "message" and frame["data"]["message"] == "marker":
                break
        assert about_hidden == []
        assert t.viewer.world[visible]["status"] == "dnd"
        assert (
            await conn.fetchval(
                "SELECT status FROM discord_users WHERE server_id = $1 AND user_id = $2", t.sid, hidden
            )
            == "dnd"
        )  # stored while hidden

        await t.unrule("hide_user", hidden)
        await t.shows_exactly_the_visible()
        assert t.viewer.world[hidden]["status"] == "dnd"  # back as it is now


async def test_the_opt_out_role_works_from_the_simulator(database_url: str, conn: asyncpg.Connection) -> None:
    async with town(database_url, conn, seed=34) as t:
        member = min(t.others)
        await t.rule("opt_out_role", OPT_OUT)  # before the role exists: it counts once it is created
        role = await t.control("roles/create", name=OPT_OUT)

        async def give(roles: list[str]) -> None:
            await t.control("members/update", user_id=member, roles=roles)

        await give([role["id"]])
        await wait_for(t.hidden, message="the member who took the opt-out role is hidden")
        assert await t.hidden() == {member}
        await t.shows_exactly_the_visible()
        assert member not in t.viewer.world

        await give([])
        await wait_for(lambda: _equal(t.hidden, set()), message="the member who dropped the role is shown")
        await t.shows_exactly_the_visible()
        assert member in t.viewer.world

        # The rule names the role: renaming it away shows its holders, renaming it back hides them again.
        await give([role["id"], t.fans_role])
        await wait_for(lambda: _equal(t.hidden, {member}), message="hidden again")
        await t.control("roles/rename", role_id=role["id"], name="just a role")
        await wait_for(lambda: _equal(t.hidden, set()), message="shown after the rename")
        await t.shows_exactly_the_visible()
        await t.control("roles/rename", role_id=role["id"], name=OPT_OUT)
        await wait_for(lambda: _equal(t.hidden, {member}), message="hidden after the rename back")
        await t.shows_exactly_the_visible()
        await t.control("roles/delete", role_id=role["id"])
        await wait_for(lambda: _equal(t.hidden, set()), message="shown once the role is deleted")
        await t.shows_exactly_the_visible()
        assert member in t.viewer.world
        # Its holders lost it (Discord sends no member update for that): the row says so too.
        assert await conn.fetchval(
            "SELECT role_ids FROM discord_users WHERE server_id = $1 AND user_id = $2", t.sid, member
        ) == [t.fans_role]


async def test_a_rule_made_while_nobody_views_is_applied_at_the_next_join(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with town(database_url, conn, seed=35) as t:
        member = min(t.fans)
        await t.viewer.ws.close()
        await t.rule("exclude_role", "fans")
        async with Viewer.open(t.server) as viewer:
            await viewer.expect("server-list")
            await viewer.join(t.sid)
            assert member not in viewer.world
            await t.shows_exactly_the_visible(viewer)
