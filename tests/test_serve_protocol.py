"""The rules of docs/protocol.md, one by one, against a real server, real PostgreSQL and real sockets."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.test_serve_support import Viewer, add_server, add_users, db_world, running
from tests.waiting import wait_for

A, B, C = "100000000000000001", "100000000000000002", "100000000000000003"
ALICE, BOB, CAROL = "200000000000000001", "200000000000000002", "200000000000000003"


async def seed(conn: asyncpg.Connection) -> None:
    """A (alias 'alpha', default, hide_offline), B (no alias, shows offline), C (passworded)."""
    await add_server(conn, A, "Alpha", alias="alpha", is_default=True, hide_offline=True)
    await add_server(conn, B, "Bravo", hide_offline=False)
    await add_server(conn, C, "Charlie", passworded=True)
    await add_users(conn, A, {ALICE: ("alice", "online", "#ff0000"), BOB: ("bob", "offline", "#00ff00")})
    await add_users(conn, B, {ALICE: ("alice", "idle", "#ff0000"), CAROL: ("carol", "offline", "#0000ff")})


# ---------------------------------------------------------------- rules 1, 2, 4, 18


@pytest.mark.parametrize("path", ["/", "/ws", "/dzone/ws"])
async def test_server_list_at_once_on_any_path_without_secrets(database_url, conn, path):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server, path) as v:
        frame = await v.expect("server-list")
        assert list(frame["data"]) == ["alpha", B, C]  # keyed by id: what the client's links hold (rule 22)
        assert frame["data"]["alpha"] == {
            "id": "alpha",
            "name": "Alpha",
            "passworded": False,
            "default": True,
        }
        assert frame["data"][B]["id"] == B
        assert frame["data"][C]["passworded"] is True
        for entry in frame["data"].values():
            assert set(entry) == {"id", "name", "passworded", "default"}
        # exactly once: the next frame answers our connect
        await v.join("alpha")


async def test_disabled_and_departed_servers_are_not_listed(database_url, conn):
    await seed(conn)
    await conn.execute("UPDATE discord_servers SET enabled = false WHERE server_id = $1", B)
    await conn.execute("UPDATE discord_servers SET departed_at = now() WHERE server_id = $1", C)
    async with running(database_url) as server, Viewer.open(server) as v:
        assert list((await v.expect("server-list"))["data"]) == ["alpha"]
        assert (await v.connect(B))["type"] == "error"


# ---------------------------------------------------------------- rules 5, 6, 7


@pytest.mark.parametrize(
    "data",
    [{"server": None}, {}, {"server": ""}, {"server": "   "}, {"server": "default"}, {"server": " default "}],
)
async def test_default_resolution_echoes_resolved_id(database_url, conn, data):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.send({"type": "connect", "data": data})
        join = await v.expect("server-join")
        assert join["data"]["request"] == {"server": "alpha"}
        assert join["data"]["serverName"] == "Alpha"
        assert set(join["data"]["users"]) == {ALICE}  # bob is offline on a hide-offline server


async def test_default_without_is_default_is_first_enabled_server(database_url, conn):
    await add_server(conn, B, "Bravo")
    await add_server(conn, A, "Alpha", alias="alpha")
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert (await v.join(None))["data"]["request"]["server"] in ("alpha", B)
        first = (await v.join(None))["data"]["request"]["server"]
        async with Viewer.open(server) as w:
            await w.expect("server-list")
            assert (await w.join("default"))["data"]["request"]["server"] == first


async def test_alias_and_snowflake_both_match(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert (await v.join(A))["data"]["request"]["server"] == "alpha"
        assert (await v.join("alpha"))["data"]["request"]["server"] == "alpha"
        join = await v.join(B)
        assert join["data"]["request"]["server"] == B
        assert set(join["data"]["users"]) == {ALICE, CAROL}  # offline shown: hide_offline false
        assert join["data"]["users"][CAROL] == {
            "uid": CAROL,
            "username": "carol",
            "status": "offline",
            "roleColor": "#0000ff",
        }


async def test_client_id_global_and_per_server(database_url, conn):
    await seed(conn)
    await conn.execute("UPDATE discord_servers SET oauth_client_id = '555' WHERE server_id = $1", B)
    async with running(database_url, oauth_client_id="777") as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert (await v.join("alpha"))["data"]["clientId"] == "777"
        assert (await v.join(B))["data"]["clientId"] == "555"
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert "clientId" not in (await v.join("alpha"))["data"]


async def test_snapshot_is_capped(database_url, conn):
    await add_server(conn, A, "Alpha", hide_offline=False)
    users = {
        f"3000000000000000{i:02d}": (f"u{i}", "online" if i < 5 else "offline", "#123456") for i in range(10)
    }
    await add_users(conn, A, users)
    async with running(database_url, snapshot_max_users=4) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        shown = (await v.join(A))["data"]["users"]
        assert len(shown) == 4
        assert all(u["status"] == "online" for u in shown.values())  # online members first


# ---------------------------------------------------------------- rules 9, 14, 15, 16


async def test_unknown_server_is_an_error_and_keeps_the_current_server(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        assert (await v.connect("nope"))["data"][
            "message"
        ] == "Sorry, couldn't connect to that Discord server."
        await v.join("alpha")
        error = await v.connect("still-nope")
        assert error["type"] == "error"
        # still on alpha: its events still arrive
        await conn.execute(
            "UPDATE discord_users SET status = 'dnd' WHERE server_id = $1 AND user_id = $2", A, ALICE
        )
        presence = await v.expect("presence")
        assert presence["server"] == A and presence["data"]["status"] == "dnd"


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "Invalid JSON"),
    (b"\xff\xfe\x00", "Invalid binary encoding"),
    ("[1, 2]", "expected a JSON object"),
    ('"connect"', "expected a JSON object"),
    ("null", "expected a JSON object"),
    ('{"data": {}}', "'type' must be a string"),
    ('{"type": 5}', "'type' must be a string"),
    ('{"type": "get_user_data"}', "Unknown event type"),
    ('{"type": "connect"}', "'data' must be an object"),
    ('{"type": "connect", "data": "alpha"}', "'data' must be an object"),
    ('{"type": "connect", "data": {"server": 5}}', "'server' must be a string"),
    ('{"type": "connect", "data": {"server": ["alpha"]}}', "'server' must be a string"),
    (
        '{"type": "connect", "data": {"server": "alpha", "discordToken": 5}}',
        "'discordToken' must be a string",
    ),
]


async def test_bad_frames_get_errors_and_the_socket_stays_open(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        for raw, text in BAD_FRAMES:
            await v.ws.send(raw)
            error = await v.expect("error")
            assert set(error) == {"type", "data"} and text in error["data"]["message"], (raw, error)
        # binary frames holding UTF-8 JSON work like text
        await v.ws.send(orjson.dumps({"type": "connect", "data": {"server": "alpha"}}))
        await v.expect("server-join")
        # after errors while joined, still on alpha
        await v.ws.send("garbage")
        await v.expect("error")
        await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", A, ALICE)
        assert (await v.expect("presence"))["data"]["delete"] is True


async def test_oversize_frame_is_closed_with_1009(database_url, conn):
    await seed(conn)
    async with running(database_url, max_frame_bytes=1024) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.ws.send('{"type": "connect", "data": {"server": "' + "x" * 2000 + '"}}')
        with pytest.raises(ConnectionClosed) as caught:
            await v.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009
        # the server is fine
        async with Viewer.open(server) as w:
            await w.expect("server-list")
            await w.join()


async def test_failing_connects_are_slowed_down_not_closed(database_url, conn):
    await seed(conn)
    async with running(database_url, connects_per_minute=120) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(124):  # burst of 120, then 2 per second
            await v.send({"type": "connect", "data": {"server": "nope"}})
            await v.expect("error")
        assert loop.time() - started >= 1.5
        await v.join("alpha")  # still open and usable


# ---------------------------------------------------------------- rules 8, 10, 11, 13: the relay


async def test_sql_change_reaches_viewers_of_that_server_only(database_url, conn):
    await seed(conn)
    async with (
        running(database_url) as server,
        Viewer.open(server) as a1,
        Viewer.open(server) as a2,
        Viewer.open(server) as b1,
    ):
        for v in (a1, a2, b1):
            await v.expect("server-list")
        await a1.join("alpha")
        await a2.join(A)
        await b1.join(B)
        await conn.execute(
            "UPDATE discord_users SET status = 'dnd' WHERE server_id = $1 AND user_id = $2", A, ALICE
        )
        expected = {
            "type": "presence",
            "server": A,
            "data": {"uid": ALICE, "status": "dnd", "username": "alice", "roleColor": "#ff0000"},
        }
        assert await a1.recv() == expected
        assert await a2.recv() == expected
        # b1 got nothing of A: its next frame is B's own change
        await conn.execute(
            "UPDATE discord_users SET status = 'online' WHERE server_id = $1 AND user_id = $2", B, CAROL
        )
        frame = await b1.recv()
        assert frame["server"] == B and frame["data"]["uid"] == CAROL and frame["data"]["status"] == "online"


async def test_delete_and_hide_offline_send_delete_true(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as a, Viewer.open(server) as b:
        await a.expect("server-list")
        await b.expect("server-list")
        await a.join("alpha")
        await b.join(B)
        # offline on a hide-offline server -> delete, with the name
        await conn.execute(
            "UPDATE discord_users SET status = 'offline' WHERE server_id = $1 AND user_id = $2", A, ALICE
        )
        frame = await a.expect("presence")
        assert frame["data"] == {
            "uid": ALICE,
            "status": "offline",
            "username": "alice",
            "roleColor": "#ff0000",
            "delete": True,
        }
        # back online -> a full presence (it creates the actor again)
        await conn.execute(
            "UPDATE discord_users SET status = 'online' WHERE server_id = $1 AND user_id = $2", A, BOB
        )
        frame = await a.expect("presence")
        assert frame["data"] == {"uid": BOB, "status": "online", "username": "bob", "roleColor": "#00ff00"}
        # offline on a server that shows offline members -> plain status, no delete
        await conn.execute(
            "UPDATE discord_users SET status = 'offline' WHERE server_id = $1 AND user_id = $2", B, ALICE
        )
        frame = await b.expect("presence")
        assert frame["data"] == {
            "uid": ALICE,
            "status": "offline",
            "username": "alice",
            "roleColor": "#ff0000",
        }
        # the row deleted -> delete true
        await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", B, CAROL)
        frame = await b.expect("presence")
        assert frame["data"]["uid"] == CAROL and frame["data"]["delete"] is True
        assert frame["data"]["username"] == "carol"


async def test_no_event_before_the_first_server_join(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as witness, Viewer.open(server) as idle:
        await witness.expect("server-list")
        await idle.expect("server-list")
        await witness.join("alpha")
        await conn.execute(
            "UPDATE discord_users SET status = 'idle' WHERE server_id = $1 AND user_id = $2", A, ALICE
        )
        await conn.execute("SELECT dzone_notify_message($1, $2, '42', '43', 'hello')", A, ALICE)
        await witness.expect("presence")
        await witness.expect("message")
        join = await idle.join("alpha")  # the very next frame is the join, which already has the change
        assert join["data"]["users"][ALICE]["status"] == "idle"


async def test_switch_never_leaks_the_old_server_and_loses_nothing_of_the_new(database_url, conn):
    await seed(conn)
    many = {f"4000000000000000{i:02d}": (f"m{i}", "online", "#abcdef") for i in range(30)}
    await add_users(conn, B, many)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.join("alpha")

        async def churn() -> None:
            writer = await asyncpg.connect(database_url)
            try:
                for round_ in range(6):
                    for uid in many:
                        status = ("idle", "dnd", "online")[round_ % 3]
                        await writer.execute(
                            "UPDATE discord_users SET status = $3 WHERE server_id = $1 AND user_id = $2",
                            B,
                            uid,
                            status,
                        )
                        await writer.execute(
                            "UPDATE discord_users SET status = $2 WHERE server_id = $1 AND user_id = $3",
                            A,
                            status,
                            ALICE,
                        )
            finally:
                await writer.close()

        task = asyncio.create_task(churn())
        await asyncio.sleep(0)  # let the writer start: the switch happens in the middle of the churn
        await v.send({"type": "connect", "data": {"server": B}})
        while True:  # skip alpha's events that were sent before the switch
            frame = await v.recv()
            if frame["type"] == "server-join":
                break
            assert frame["server"] == A
        await task
        # A marker on B after the churn, preceded by a change on A that must not arrive.
        await conn.execute("UPDATE discord_users SET username = 'zed' WHERE server_id = $1", A)
        await conn.execute(
            "UPDATE discord_users SET username = 'omega' WHERE server_id = $1 AND user_id = $2", B, CAROL
        )
        while True:
            frame = await v.recv()
            assert frame["server"] == B, "an event of the old server leaked after the switch"
            if frame["data"].get("username") == "omega":
                break
        # nothing lost: the snapshot plus the events give exactly the database's state
        assert v.world == await db_world(conn, B, hide_offline=False)


async def test_messages_are_capped_relayed_and_only_for_known_members(database_url, conn):
    await seed(conn)
    async with running(database_url, message_max_chars=10) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.join("alpha")
        await conn.execute("SELECT dzone_notify_message($1, $2, '42', '43', $3)", A, "999", "from a stranger")
        await conn.execute(
            "SELECT dzone_notify_message($1, $2, '42', '43', $3)", A, ALICE, "line one\nline two"
        )
        frame = await v.expect("message")
        assert frame == {
            "type": "message",
            "server": A,
            "data": {"uid": ALICE, "message": "line one l", "channel": "42"},
        }
        # operator turns relay off: takes effect at once
        await conn.execute("UPDATE discord_servers SET relay_messages = false WHERE server_id = $1", A)
        hub = server._hub
        assert hub is not None
        await wait_for(
            lambda: hub.directory is not None and not hub.directory.by_key[A].relay_messages,
            message="relay off applied",
        )
        await conn.execute("SELECT dzone_notify_message($1, $2, '42', '43', 'hidden')", A, ALICE)
        await conn.execute(
            "UPDATE discord_users SET status = 'idle' WHERE server_id = $1 AND user_id = $2", A, ALICE
        )
        assert (await v.recv())["type"] == "presence"


# ---------------------------------------------------------------- server changes and resync


async def test_server_changes_reach_new_sockets_and_viewers(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.join(B)
        await add_server(conn, "100000000000000009", "Newcomer", alias="new")
        # hide offline on B: carol (offline) disappears for the viewer
        await conn.execute("UPDATE discord_servers SET hide_offline = true WHERE server_id = $1", B)
        frame = await v.expect("presence")
        assert frame["data"]["uid"] == CAROL and frame["data"]["delete"] is True

        async def listed() -> bool:
            async with Viewer.open(server) as w:
                return "new" in (await w.expect("server-list"))["data"]  # keyed by id (rule 22)

        await wait_for(listed, message="new server listed")


async def test_bulk_resync_sends_only_differences(database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as v:
        await v.expect("server-list")
        await v.join(B)
        async with conn.transaction():
            await conn.execute("SET LOCAL dzone.bulk = 'on'")
            await conn.execute(
                "UPDATE discord_users SET status = 'dnd' WHERE server_id = $1 AND user_id = $2", B, CAROL
            )
            await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", B, ALICE)
            await add_users(conn, B, {BOB: ("bob", "online", "#00ff00")})
            await conn.execute("SELECT dzone_notify_resync($1)", B)
        frames = [await v.expect("presence") for _ in range(3)]
        by_uid = {f["data"]["uid"]: f["data"] for f in frames}
        assert by_uid[CAROL]["status"] == "dnd"
        assert by_uid[ALICE]["delete"] is True
        assert by_uid[BOB]["username"] == "bob"
        assert v.world == await db_world(conn, B, hide_offline=False)
