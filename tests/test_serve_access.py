"""Access follows the database, live: a server that becomes passworded, disabled, departed or deleted, and
a passworded server's member whose row goes away, stop reaching the viewers who no longer qualify at that
commit. Everything committed after it is relayed to others (a witness proves it was), never to them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from shared import feed
from simulator.config import SimConfig
from simulator.server import Simulator
from tests.test_serve_support import Viewer, add_server, add_users, running

A, B = "100000000000000001", "100000000000000002"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(4)}
ACCESS_LOST = "You no longer have access to this Discord server. Pick another server to keep watching."
AFTER = "after-the-flip"


async def seed(conn: asyncpg.Connection, **a_columns: Any) -> None:
    await add_server(conn, A, "Alpha", is_default=True, hide_offline=False, **a_columns)
    await add_server(conn, B, "Bravo", hide_offline=False)
    await add_users(conn, A, USERS)
    await add_users(conn, B, USERS)


async def changes_of_a_after(conn: asyncpg.Connection) -> None:
    """Several commits that viewers of A would see: renames, a status change, a chat message, a new member."""
    uid = next(iter(USERS))
    await conn.execute(
        "UPDATE discord_users SET username = $2 WHERE server_id = $1 AND user_id = $3", A, AFTER, uid
    )
    await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE server_id = $1", A)
    await conn.execute(feed.NOTIFY_MESSAGE, A, uid, "55", "9001", AFTER)
    await add_users(conn, A, {"300000000000000001": (AFTER, "idle", "#445566")})


async def marker_on_b(conn: asyncpg.Connection, witness: Viewer) -> None:
    """Commit a change of B and wait until the witness has it: every earlier commit has been relayed."""
    await conn.execute(
        "UPDATE discord_users SET username = 'marker' WHERE server_id = $1 AND user_id = $2",
        B,
        next(iter(USERS)),
    )
    await witness.until(lambda f: f["type"] == "presence" and f["data"]["username"] == "marker")


async def frames_until(viewer: Viewer, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every frame up to and including the first that satisfies ``predicate``."""
    seen = []
    while True:
        frame = await viewer.recv()
        seen.append(frame)
        if predicate(frame):
            return seen


async def assert_cut(viewer: Viewer, flip_frames_allowed: Callable[[dict[str, Any]], bool]) -> None:
    """The viewer got the access-lost error, nothing committed after the flip, and can join B at once."""
    before_error = await frames_until(viewer, lambda f: f["type"] == "error")
    assert before_error[-1]["data"]["message"] == ACCESS_LOST
    assert all(flip_frames_allowed(f) for f in before_error[:-1]), before_error
    # Ask for B: anything still queued for this socket would arrive before B's server-join.
    await viewer.send({"type": "connect", "data": {"server": B}})
    after_error = await frames_until(viewer, lambda f: f["type"] == "server-join")
    assert after_error == [after_error[-1]], after_error
    assert after_error[-1]["data"]["request"]["server"] == B
    assert AFTER not in str(before_error + after_error)


async def passworded(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE discord_servers SET passworded = TRUE WHERE server_id = $1", A)


async def disabled(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE discord_servers SET enabled = FALSE WHERE server_id = $1", A)


async def departed(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE discord_servers SET departed_at = now() WHERE server_id = $1", A)


async def deleted(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM discord_servers WHERE server_id = $1", A)
    # Then A comes back (public): its new life must not reach the viewers who were cut.
    await add_server(conn, A, "Alpha again", is_default=True, hide_offline=False)
    await add_users(conn, A, USERS)


FLIPS: dict[str, Callable[[asyncpg.Connection], Awaitable[None]]] = {
    "passworded": passworded,
    "disabled": disabled,
    "departed": departed,
    "deleted": deleted,
}


@pytest.mark.parametrize("flip", FLIPS)
async def test_a_flip_cuts_every_viewer_at_that_commit_on_every_replica(database_url, conn, flip: str):
    await seed(conn)
    async with (
        running(database_url) as one,
        running(database_url) as two,
        Viewer.open(one) as on_one,
        Viewer.open(two) as on_two,
        Viewer.open(one) as witness,
    ):
        for viewer in (on_one, on_two, witness):
            await viewer.expect("server-list")
        await on_one.join(A)
        await on_two.join(A)
        await witness.join(B)
        await FLIPS[flip](conn)
        await changes_of_a_after(conn)
        await marker_on_b(conn, witness)

        def from_the_flip(frame: dict[str, Any]) -> bool:
            # Deleting the server deletes its members in the same statement (cascade): their presence
            # deletes may precede the server's own notification. Nothing else may.
            return flip == "deleted" and frame["type"] == "presence" and frame["data"].get("delete") is True

        await assert_cut(on_one, from_the_flip)
        await assert_cut(on_two, from_the_flip)
        # A new anonymous join answers as the database now says.
        async with Viewer.open(one) as late:
            await late.expect("server-list")
            answer = await late.connect(A)
            if flip == "passworded":
                assert answer["data"]["message"].startswith("This server requires Discord authentication")
            elif flip == "deleted":
                assert answer["type"] == "server-join" and answer["data"]["serverName"] == "Alpha again"
            else:
                assert answer["data"]["message"] == "Sorry, couldn't connect to that Discord server."


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(guilds=1, members=5)) as simulator:
        yield simulator


async def test_deleting_a_members_row_cuts_only_that_members_sockets(database_url, conn, sim):
    guild = next(iter(sim.world.guilds.values()))
    kept, removed = [str(uid) for uid in guild.members if uid != sim.world.bot_user.id][:2]
    await seed(conn, passworded=True)
    await add_users(conn, A, {kept: ("kept", "online", "#000000"), removed: ("removed", "online", "#000000")})
    tokens = {uid: sim.issue_oauth_token(int(uid)) for uid in (kept, removed)}
    async with (
        running(database_url, discord_api_base=sim.api_base) as server,
        Viewer.open(server) as keeper,
        Viewer.open(server) as leaver,
        Viewer.open(server) as anonymous,
    ):
        for viewer in (keeper, leaver, anonymous):
            await viewer.expect("server-list")
        await keeper.join(A, discordToken=tokens[kept])
        await leaver.join(A, discordToken=tokens[removed])
        await anonymous.join(B)
        await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", A, removed)
        await changes_of_a_after(conn)
        # The member who stays sees the departure and everything after it: the witness.
        await keeper.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == removed)
        await keeper.until(lambda f: f["type"] == "message" and f["data"]["message"] == AFTER)
        await assert_cut(leaver, lambda f: False)
        # Their token no longer admits them either (the cache holds who they are, not that they may enter).
        answer = await leaver.connect(A, discordToken=tokens[removed])
        assert answer["data"]["message"] == "Your Discord account is not a member of this server."


async def test_a_bulk_resync_that_drops_a_member_cuts_their_socket(database_url, conn, sim):
    guild = next(iter(sim.world.guilds.values()))
    member = next(str(uid) for uid in guild.members if uid != sim.world.bot_user.id)
    await seed(conn, passworded=True)
    await add_users(conn, A, {member: ("member", "online", "#000000")})
    async with (
        running(database_url, discord_api_base=sim.api_base) as server,
        Viewer.open(server) as v,
    ):
        await v.expect("server-list")
        await v.join(A, discordToken=sim.issue_oauth_token(int(member)))
        async with conn.transaction():  # as the ingest's full sync does: no per-row events, one resync
            await conn.execute(feed.BULK_MODE)
            await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", A, member)
            await conn.execute(feed.NOTIFY_RESYNC, A)
        await changes_of_a_after(conn)
        await assert_cut(v, lambda f: False)
