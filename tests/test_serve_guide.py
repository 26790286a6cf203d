"""The d-back guide's provider examples (custom-data-providers), with only the import changed and network
calls pointed at the simulator, run against our server; plus provider validation and failure handling."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Dict, Optional, Tuple  # noqa: UP035 - the guide's own typing, kept as written

import aiohttp
import asyncpg
import discord
from discord.ext import commands

from serve import WebSocketServer
from shared.discord_rules import DEFAULT_ROLE_COLOR
from simulator.config import SimConfig
from simulator.server import Simulator
from simulator.testing import SIM_TOKEN
from tests.test_serve_support import Viewer, add_server, add_users
from tests.test_serve_support import settings as serve_settings
from tests.waiting import wait_for

A, B = "100000000000000001", "100000000000000002"


def guide_server(**overrides: Any) -> WebSocketServer:
    """``WebSocketServer(port=3000, host="localhost")`` of the guide, on a free port and without a database."""
    return WebSocketServer(port=0, host="127.0.0.1", settings=serve_settings(None, **overrides))


@contextlib.asynccontextmanager
async def started(server: WebSocketServer):
    """``await server.start()`` blocks like d-back's; run it as a task and stop it afterwards."""
    task = asyncio.create_task(server.start())
    try:
        await wait_for(lambda: server._server is not None or task.done(), message="server started")
        if task.done():
            task.result()
        yield server
    finally:
        await server.stop()
        await task


# ---------------------------------------------------------------- "Complete Discord Bot Example"


def build_guide_bot(ws_server: WebSocketServer) -> commands.Bot:
    """The guide's discord.py example, verbatim apart from print() and the missing imports it assumed."""
    intents = discord.Intents.default()
    intents.presences = True
    intents.members = True
    bot = commands.Bot(command_prefix="!", intents=intents)

    async def get_discord_user_data(server_id: str) -> Dict[str, Any]:  # noqa: UP006
        try:
            guild = bot.get_guild(int(server_id))
            if not guild:
                return {}
            users = {}
            for member in guild.members:
                if member.bot:
                    continue
                status_map = {
                    discord.Status.online: "online",
                    discord.Status.idle: "idle",
                    discord.Status.dnd: "dnd",
                    discord.Status.offline: "offline",
                }
                status = status_map.get(member.status, "offline")
                role_color = "#99AAB5"
                if member.roles:
                    for role in reversed(member.roles):
                        if role.color.value != 0:
                            role_color = f"#{role.color.value:06x}"
                            break
                users[str(member.id)] = {
                    "uid": str(member.id),
                    "username": member.display_name,
                    "status": status,
                    "roleColor": role_color,
                }
            return users
        except Exception as e:
            print(f"Error fetching user data: {e}")
            return {}

    async def get_discord_servers() -> Dict[str, Any]:  # noqa: UP006
        try:
            servers = {}
            for guild in bot.guilds:
                servers[str(guild.id)] = {
                    "id": str(guild.id),
                    "name": guild.name,
                    "passworded": False,
                    "default": False,
                }
            if servers:
                first_id = next(iter(servers))
                servers[first_id]["default"] = True
            return servers
        except Exception as e:
            print(f"Error fetching servers: {e}")
            return {}

    ws_server.on_get_user_data(get_discord_user_data)
    ws_server.on_get_server_data(get_discord_servers)

    def get_role_color(member) -> str:
        if member.roles:
            for role in reversed(member.roles):
                if role.color.value != 0:
                    return f"#{role.color.value:06x}"
        return "#99AAB5"

    @bot.event
    async def on_ready():
        await ws_server.start()

    @bot.event
    async def on_presence_update(before, after):
        if before.status != after.status:
            status_map = {
                discord.Status.online: "online",
                discord.Status.idle: "idle",
                discord.Status.dnd: "dnd",
                discord.Status.offline: "offline",
            }
            await ws_server.broadcast_presence(
                server=str(after.guild.id),
                uid=str(after.id),
                status=status_map.get(after.status, "offline"),
                username=after.display_name,
                role_color=get_role_color(after),
            )

    @bot.event
    async def on_member_remove(member):
        await ws_server.broadcast_presence(
            server=str(member.guild.id), uid=str(member.id), status="offline", delete=True
        )

    return bot


async def test_guide_discord_bot_example_against_the_simulator():
    async with Simulator(SimConfig(guilds=2, members=8)) as sim:
        sim.point_discord_py()
        ws_server = guide_server()
        bot = build_guide_bot(ws_server)
        bot_task = asyncio.create_task(bot.start(SIM_TOKEN))
        try:
            await wait_for(
                lambda: ws_server._server is not None, timeout=30, message="on_ready started serving"
            )
            guild_id, guild = next(iter(sim.world.guilds.items()))
            humans = [uid for uid in guild.members if uid != sim.world.bot_user.id]
            async with Viewer.open(ws_server) as v:
                listing = (await v.expect("server-list"))["data"]
                assert set(listing) == {str(g) for g in sim.world.guilds}
                join = await v.join(None)  # "default": the guide marks the first guild
                assert join["data"]["request"]["server"] == str(guild_id)
                assert set(join["data"]["users"]) == {str(uid) for uid in humans}
                # a presence change in Discord reaches the viewer through on_presence_update
                target = humans[0]
                current = v.world[str(target)]["status"]
                new_status = "dnd" if current != "dnd" else "idle"
                sim.engine.set_presence(guild_id, target, new_status)
                frame = await v.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == str(target))
                assert frame["data"]["status"] == new_status and frame["data"]["username"]
                # on_member_remove sends delete without a name: we fill it in from the snapshot (no ghost)
                sim.engine.remove_member(guild_id, humans[1])
                frame = await v.until(
                    lambda f: f["type"] == "presence" and f["data"]["uid"] == str(humans[1])
                )
                assert frame["data"]["delete"] is True
                assert frame["data"]["username"] == join["data"]["users"][str(humans[1])]["username"]
        finally:
            await ws_server.stop()
            await bot.close()
            await asyncio.gather(bot_task, return_exceptions=True)


# ---------------------------------------------------------------- "Using asyncpg with PostgreSQL"


class DatabaseProvider:
    """The guide's DatabaseProvider, verbatim (its SQL runs unchanged on our schema)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.pool: Optional[asyncpg.Pool] = None  # noqa: UP045

    async def connect(self):
        self.pool = await asyncpg.create_pool(self.db_url)

    async def get_user_data(self, server_id: str) -> Dict[str, Any]:  # noqa: UP006
        if not self.pool:
            return {}
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    """
                    SELECT user_id, username, status, role_color
                    FROM discord_users
                    WHERE server_id = $1 AND status != 'offline'
                """,
                    server_id,
                )
                users = {}
                for row in rows:
                    users[row["user_id"]] = {
                        "uid": row["user_id"],
                        "username": row["username"],
                        "status": row["status"],
                        "roleColor": row["role_color"],
                    }
                return users
        except Exception as e:
            print(f"Database error: {e}")
            return {}

    async def get_server_data(self) -> Dict[str, Any]:  # noqa: UP006
        if not self.pool:
            return {}
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch("""
                    SELECT server_id, name, passworded, is_default
                    FROM discord_servers
                    WHERE enabled = true
                """)
                servers = {}
                for row in rows:
                    servers[row["server_id"]] = {
                        "id": row["server_id"],
                        "name": row["name"],
                        "passworded": row["passworded"],
                        "default": row["is_default"],
                    }
                return servers
        except Exception as e:
            print(f"Database error: {e}")
            return {}


async def test_guide_database_provider(database_url, conn):
    await add_server(conn, A, "Alpha", is_default=True)
    await add_server(conn, B, "Bravo")
    await add_users(
        conn,
        A,
        {
            "200000000000000001": ("alice", "online", "#ff0000"),
            "200000000000000002": ("bob", "offline", "#00ff00"),
        },
    )
    db = DatabaseProvider(database_url)
    await db.connect()
    server = guide_server()
    server.on_get_user_data(db.get_user_data)
    server.on_get_server_data(db.get_server_data)
    try:
        async with started(server), Viewer.open(server) as v:
            assert set((await v.expect("server-list"))["data"]) == {A, B}
            join = await v.join("default")
            assert join["data"]["request"]["server"] == A
            assert set(join["data"]["users"]) == {"200000000000000001"}
            # on_get_user_data is asked again on every connect, like d-back: a change shows on the next join
            await conn.execute(
                "UPDATE discord_users SET status = 'online' WHERE user_id = '200000000000000002'"
            )
            await v.send({"type": "connect", "data": {"server": A}})
            frames = [await v.recv(), await v.recv()]
            # the viewer that is already on A gets the difference, then the new snapshot
            assert frames[0]["type"] == "presence" and frames[0]["data"]["uid"] == "200000000000000002"
            assert set(frames[1]["data"]["users"]) == {"200000000000000001", "200000000000000002"}
    finally:
        assert db.pool is not None
        await db.pool.close()


# ---------------------------------------------------------------- hybrid, resilient, cached


MOCK_USERS = {
    "900000000000000001": {
        "uid": "900000000000000001",
        "username": "mock",
        "status": "online",
        "roleColor": "#123456",
    }
}


async def mock_user_data(server_id: str) -> Dict[str, Any]:  # noqa: UP006
    """Stands in for d-back's MockDataProvider.get_mock_user_data (the adapted import)."""
    return dict(MOCK_USERS)


async def test_guide_hybrid_resilient_and_cached_providers():
    async with Simulator(SimConfig(guilds=1, members=3)) as sim:
        real_guild = str(next(iter(sim.world.guilds)))

        async def get_discord_user_data(server_id: str) -> Dict[str, Any]:  # noqa: UP006
            """The guide's REST provider, pointed at the simulator (which has no member list: it answers 404)."""
            async with aiohttp.ClientSession() as session:
                url = f"{sim.api_base}/guilds/{server_id}/members"
                async with session.get(url, headers={"Authorization": f"Bot {SIM_TOKEN}"}) as resp:
                    if resp.status != 200:
                        return {}
                    return {}

        async def hybrid_user_data(server_id: str) -> Dict[str, Any]:  # noqa: UP006
            production_servers = [real_guild]
            if server_id in production_servers:
                return await get_discord_user_data(server_id)
            return await mock_user_data(server_id)

        async def resilient_user_data(server_id: str) -> Dict[str, Any]:  # noqa: UP006
            try:
                data = await get_discord_user_data(server_id)
                if data and isinstance(data, dict) and len(data) > 0:
                    return data
                raise ValueError("No data returned")
            except Exception as e:
                print(f"Falling back to mock data: {e}")
                return await mock_user_data(server_id)

        class CachedDataProvider:
            def __init__(self, cache_ttl: int = 60):
                self.cache_ttl = cache_ttl
                self._user_cache: Dict[str, Tuple[Dict[str, Any], float]] = {}  # noqa: UP006
                self.fetches = 0

            async def get_user_data(self, server_id: str) -> Dict[str, Any]:  # noqa: UP006
                import time

                if server_id in self._user_cache:
                    data, cached_time = self._user_cache[server_id]
                    if time.time() - cached_time < self.cache_ttl:
                        return data
                data = await self._fetch_user_data(server_id)
                self._user_cache[server_id] = (data, time.time())
                return data

            async def _fetch_user_data(self, server_id: str) -> Dict[str, Any]:  # noqa: UP006
                self.fetches += 1
                return await resilient_user_data(server_id)

        async def servers() -> Dict[str, Any]:  # noqa: UP006
            return {
                real_guild: {"id": "real", "name": "Real", "passworded": False, "default": True},
                "42": {"id": "mocked", "name": "Mocked", "passworded": False},
            }

        cached = CachedDataProvider()
        for provider, real_users, mocked_users in (
            (hybrid_user_data, set(), set(MOCK_USERS)),
            (resilient_user_data, set(MOCK_USERS), set(MOCK_USERS)),
            (cached.get_user_data, set(MOCK_USERS), set(MOCK_USERS)),
        ):
            server = guide_server()
            server.on_get_server_data(servers)
            server.on_get_user_data(provider)
            async with started(server), Viewer.open(server) as v:
                await v.expect("server-list")
                assert set((await v.join("real"))["data"]["users"]) == real_users
                assert set((await v.join("mocked"))["data"]["users"]) == mocked_users
                assert set((await v.join("real"))["data"]["users"]) == real_users
        assert cached.fetches == 2  # one per guild: the provider's own cache answered the third join


# ---------------------------------------------------------------- validation and failures


async def test_provider_output_is_validated_with_the_guides_defaults(caplog, capsys):
    async def servers() -> Dict[str, Any]:  # noqa: UP006
        return {
            A: {"name": "Alpha", "password": "hunter2", "secret": "x"},
            B: "not a dict",
            "7": {"id": "seven"},
        }

    async def users(_key: str) -> Dict[str, Any]:  # noqa: UP006
        return {
            "1": {"username": "only-name"},
            "2": {"uid": "2", "username": 5},
            "3": ["bad"],
            "4": {"uid": "4", "username": "full", "status": "idle", "roleColor": "#abcdef"},
        }

    server = guide_server()
    server.on_get_server_data(servers)
    server.on_get_user_data(users)
    async with started(server), Viewer.open(server) as v:
        listing = (await v.expect("server-list"))["data"]
        assert listing == {
            A: {"id": A, "name": "Alpha", "passworded": False, "default": False},
            "seven": {"id": "seven", "name": "seven", "passworded": False, "default": False},
        }
        join = await v.join(None)  # no default marked: the first entry
        assert join["data"]["users"] == {
            "1": {"uid": "1", "username": "only-name", "status": "offline", "roleColor": "#99aab5"},
            "4": {"uid": "4", "username": "full", "status": "idle", "roleColor": "#abcdef"},
        }
        # the guide fills in "#99AAB5": the same CSS colour, written in the project's one (lowercase) form
        assert "#99AAB5".lower() == DEFAULT_ROLE_COLOR
    logged = caplog.text + "".join(capsys.readouterr())
    assert "provider_entries_dropped" in logged and "hunter2" not in logged


async def test_a_failing_provider_never_empties_a_live_world():
    calls = {"n": 0}

    async def servers() -> Dict[str, Any]:  # noqa: UP006
        return {A: {"id": "alpha", "name": "Alpha", "default": True}}

    async def users(_key: str) -> Dict[str, Any]:  # noqa: UP006
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("backend down")
        return dict(MOCK_USERS)

    server = guide_server()
    server.on_get_server_data(servers)
    server.on_get_user_data(users)
    async with started(server), Viewer.open(server) as v, Viewer.open(server) as w:
        await v.expect("server-list")
        await w.expect("server-list")
        assert set((await v.join())["data"]["users"]) == set(MOCK_USERS)
        # the provider now fails: the next join still gets the last good snapshot, and nothing is deleted
        assert set((await w.join())["data"]["users"]) == set(MOCK_USERS)
        ready, problems = server.readiness()
        assert not ready and "backend down" in str(problems)
        await server.broadcast_presence(A, "900000000000000001", "idle")  # still relayed, name filled in
        frame = await v.expect("presence")
        assert frame["data"] == {
            "uid": "900000000000000001",
            "status": "idle",
            "username": "mock",
            "roleColor": "#123456",
        }


async def test_a_provider_failing_from_the_start_is_an_error_not_a_close():
    async def servers() -> Dict[str, Any]:  # noqa: UP006
        return {A: {"id": "alpha", "name": "Alpha", "default": True}}

    async def users(_key: str) -> Dict[str, Any]:  # noqa: UP006
        raise RuntimeError("no data yet")

    server = guide_server(provider_timeout_s=1)
    server.on_get_server_data(servers)
    server.on_get_user_data(users)
    async with started(server), Viewer.open(server) as v:
        await v.expect("server-list")
        answer = await v.connect(None)
        assert answer["type"] == "error" and "temporarily unavailable" in answer["data"]["message"]
        answer = await v.connect("alpha")
        assert answer["type"] == "error"


async def test_static_request_callback_and_client_id_callback():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "hello.txt"
        page.write_text("hello from a callback")

        async def static(path: str):
            return ("text/plain", str(page)) if path == "/hello" else None

        async def client_id(_key: str) -> str:
            return "424242"

        async def servers() -> Dict[str, Any]:  # noqa: UP006
            return {A: {"id": "alpha", "name": "Alpha", "default": True}}

        server = guide_server()
        server.on_get_server_data(servers)
        server.on_get_user_data(mock_user_data)
        server.on_static_request(static)
        server.on_get_client_id(client_id)
        async with started(server):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{server.port}/hello") as resp:
                    assert resp.status == 200 and await resp.text() == "hello from a callback"
                async with session.get(f"http://127.0.0.1:{server.port}/api/version") as resp:
                    assert resp.status == 200
            async with Viewer.open(server) as v:
                await v.expect("server-list")
                assert (await v.join())["data"]["clientId"] == "424242"
                await server.broadcast_client_id_update(A, "515151")
                assert (await v.expect("update-clientid"))["data"] == {"clientId": "515151"}
                await server.broadcast_message(A, "900000000000000001", "hi\nthere", "77")
                assert (await v.expect("message"))["data"] == {
                    "uid": "900000000000000001",
                    "message": "hi there",
                    "channel": "77",
                }
