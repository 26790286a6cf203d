"""The town a real d-zone page shows, through the client model (tests/dzone_client.py) against a real serve
and PostgreSQL: members leaving while offline, a capped server, the evening, alias links, a departed server.

Each waits for the model to settle on what the database says the viewers may see, then asserts exact
equality, no figure beyond the world's room, and no socket to any host but ours (docs/protocol.md rule 23).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from serve import WebSocketServer
from tests.dzone_client import DzoneClient
from tests.test_serve_support import add_server, db_world, running
from tests.waiting import wait_for

GUILD = "100000000000000001"
LOCKED = "100000000000000002"


def uid(n: int) -> str:
    return str(300000000000000000 + n)


async def seed(conn: asyncpg.Connection, server_id: str, statuses: list[str]) -> None:
    await conn.executemany(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color) VALUES ($1, $2, $3, $4, '#ff0000')",
        [(uid(n), server_id, f"user{n}", status) for n, status in enumerate(statuses)],
    )


@asynccontextmanager
async def page(server: WebSocketServer, query: str = "", **kwargs: Any) -> AsyncIterator[DzoneClient]:
    """A page served from the serve itself, told our socket URL (the client's first strategy)."""
    ours = f"ws://127.0.0.1:{server.port}/ws"
    client = DzoneClient(f"http://127.0.0.1:{server.port}/?socketURL={ours}{query}", **kwargs)
    client.start()
    try:
        yield client
    finally:
        await client.stop()
        assert client.opened == [ours], f"the page went elsewhere: {client.opened}"


async def settled(client: DzoneClient, conn: asyncpg.Connection, server_id: str, hide: bool) -> None:
    """Wait for the model to hold exactly the database's visible members, then assert the room held."""

    async def same() -> bool:
        return client.figures == await db_world(conn, server_id, hide)

    await wait_for(same, timeout=30, message="the page's figures == the database's visible members")
    assert client.page_errors == 0 and client.cells_left >= 0


async def test_members_who_leave_while_offline_leave_no_ghost(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await add_server(conn, GUILD, hide_offline=True, is_default=True)
    await seed(conn, GUILD, ["online"] * 5 + ["offline"] * 10)
    async with running(database_url) as server, page(server) as client:
        await settled(client, conn, GUILD, True)
        await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND status = 'offline'", GUILD)
        await conn.execute("UPDATE discord_users SET status = 'idle' WHERE user_id = $1", uid(0))  # a marker
        await settled(client, conn, GUILD, True)
        assert len(client.figures) == 5


async def test_a_capped_server_draws_no_one_outside_the_snapshot(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await add_server(conn, GUILD, hide_offline=True, is_default=True)
    await seed(conn, GUILD, ["online"] * 300)
    async with running(database_url, snapshot_max_users=50) as server, page(server) as client:
        await wait_for(lambda: len(client.figures) == 50, message="the capped snapshot")
        shown = set(client.figures)
        outside = [u for u in (uid(n) for n in range(300)) if u not in shown]
        await conn.execute("DELETE FROM discord_users WHERE user_id = ANY($1::text[])", outside[:100])
        await conn.execute(
            "UPDATE discord_users SET status = 'offline' WHERE user_id = ANY($1::text[])", outside[100:125]
        )
        # 30 of the shown leave: as many of those waiting enter, so the view stays full
        await conn.execute("DELETE FROM discord_users WHERE user_id = ANY($1::text[])", sorted(shown)[:30])

        async def capped_view() -> bool:
            visible = await db_world(conn, GUILD, True)
            return len(client.figures) == 50 and all(visible.get(u) == f for u, f in client.figures.items())

        await wait_for(capped_view, timeout=30, message="50 figures, each a visible member as it is")
        assert client.page_errors == 0 and client.joins == 1


async def test_the_evening_fills_the_town_without_running_out_of_room(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await add_server(conn, GUILD, hide_offline=True, is_default=True)
    await seed(conn, GUILD, ["online"] * 5 + ["offline"] * 600)
    async with running(database_url) as server, page(server) as client:
        await settled(client, conn, GUILD, True)
        for batch in range(8):  # 400 come online in 8 transactions 300 ms apart
            ids = [uid(5 + batch * 50 + n) for n in range(50)]
            await conn.execute(
                "UPDATE discord_users SET status = 'online' WHERE user_id = ANY($1::text[])", ids
            )
            await asyncio.sleep(0.3)  # the evening's pace, not a synchronisation
        await settled(client, conn, GUILD, True)
        assert len(client.figures) == 405
        print(f"\nevening: 405 figures, {client.joins - 1} re-join(s), page errors {client.page_errors}")


async def test_alias_and_snowflake_links_to_a_passworded_server_wait_for_the_login(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await add_server(conn, GUILD, is_default=True)
    await add_server(conn, LOCKED, passworded=True, alias="staff")
    await seed(conn, GUILD, ["online"] * 3)
    async with running(database_url) as server:
        for link in ("staff", LOCKED):
            async with page(server, f"&s={link}") as client:
                await wait_for(lambda c=client: c.pending_join is not None, message="the join held for login")  # type: ignore[arg-type,misc]
                assert client.pending_join == link and client.sent == [] and client.alerts == []
                assert client.server is None and "dzone-default-server" not in client.local_storage


async def test_a_departed_server_freezes_the_town_with_an_alert(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await add_server(conn, GUILD, is_default=True)
    await seed(conn, GUILD, ["online"] * 4)
    async with running(database_url) as server, page(server) as client:
        await settled(client, conn, GUILD, False)
        before = dict(client.figures)
        await conn.execute("UPDATE discord_servers SET departed_at = now() WHERE server_id = $1", GUILD)
        await wait_for(lambda: client.alerts, message="the alert")
        assert client.figures == before and client.live and client.page_errors == 0  # the last world stays
