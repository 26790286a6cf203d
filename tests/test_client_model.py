"""The town a real d-zone page shows, through the client model (tests/dzone_client.py) against a real serve
and PostgreSQL: members leaving while offline, a capped server, the evening, alias links, a departed server,
and, for the page ``dzone serve --static-dir`` serves (with our reconnect script), a restart on the same port
and a rolling restart of two replicas behind the shipped nginx recipe.

Each waits for the model to settle on what the database says the viewers may see, then asserts exact
equality, no figure beyond the world's room, and no socket to any host but ours (docs/protocol.md rule 23).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from serve import WebSocketServer
from tests.certs import LocalCA
from tests.dzone_client import DzoneClient
from tests.nginx import nginx_in_front
from tests.serve_process import free_port, serve_process_async, stops_accepting
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


async def changes_reach_every_page(clients: list[DzoneClient], conn: asyncpg.Connection) -> None:
    """After a restart: changes made now reach each page's fresh town live; then the pages close (before
    the serves go), none of their sockets having failed to open."""
    await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE user_id = $1", uid(1))
    await conn.execute("DELETE FROM discord_users WHERE user_id = $1", uid(2))
    await conn.execute("UPDATE discord_users SET status = 'online' WHERE user_id = $1", uid(25))
    for client in clients:
        await settled(client, conn, GUILD, True)
        assert client.live
    for client in clients:
        await client.stop()
    failed = [f for c in clients for f in c.unopened]
    assert not failed, f"a page's socket did not open: {failed[:5]}"


def gaps(clients: list[DzoneClient]) -> str:
    """Seconds without a live socket (close -> open) and to the fresh town (close -> server-join)."""
    outages = [o for c in clients for o in c.outages]
    joins = [g for c in clients for g in c.rejoin_gaps]
    return (
        f"without a live socket: median {statistics.median(outages):.3f}s, max {max(outages):.3f}s; "
        f"to the fresh server-join: median {statistics.median(joins):.3f}s, max {max(joins):.3f}s"
    )


async def test_a_restart_on_the_same_port_keeps_the_page(
    database_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIGTERM, then a new serve on the same port (SO_REUSEPORT): the old hands its viewers over, each
    page's script reconnects to the same URL and gets a fresh town; nobody goes to another host."""
    await add_server(conn, GUILD, hide_offline=True, is_default=True)
    await seed(conn, GUILD, ["online"] * 20 + ["offline"] * 10)
    port = free_port()
    ours = f"ws://127.0.0.1:{port}/ws"
    clients = [
        DzoneClient(f"http://127.0.0.1:{port}/?socketURL={ours}", reconnect_script=True, seed=n)
        for n in range(5)
    ]
    async with serve_process_async(database_url, tmp_path, {"DZONE_DRAIN_S": "6"}, port=port) as old:
        for client in clients:
            client.start()
        try:
            for client in clients:
                await settled(client, conn, GUILD, True)
            old.process.send_signal(signal.SIGTERM)
            await stops_accepting(old)
            await conn.execute("UPDATE discord_users SET status = 'idle' WHERE user_id = $1", uid(0))
            for client in clients:  # the draining serve still relays
                await settled(client, conn, GUILD, True)
            async with serve_process_async(database_url, tmp_path, port=port):
                await wait_for(
                    lambda: all(c.rejoin_gaps for c in clients), timeout=60, message="every page re-joined"
                )
                assert await asyncio.to_thread(old.process.wait, 30) == 0
                await changes_reach_every_page(clients, conn)
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
    print(f"\none host, SO_REUSEPORT hand-over, {len(clients)} pages: {gaps(clients)}")
    for client in clients:
        assert set(client.opened) == {ours} and client.blocked == [], (client.opened, client.blocked)
        assert len(client.outages) == 1 and client.joins == 2


async def test_a_rolling_restart_behind_nginx_keeps_the_page(
    database_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """docs/deploy.md's rolling restart behind the recipe: two new replicas beside the two old, then SIGTERM
    to each old one; their pages reconnect through nginx to a running replica and get a fresh town."""
    await add_server(conn, GUILD, hide_offline=True, is_default=True)
    await seed(conn, GUILD, ["online"] * 20 + ["offline"] * 10)
    ca = LocalCA(tmp_path / "ca")
    client_tls = ca.client_context()
    ports = [free_port() for _ in range(4)]  # the published range: old replicas on two, new on two
    drain = {"DZONE_DRAIN_S": "3"}
    async with (
        serve_process_async(database_url, tmp_path, drain, port=ports[0]) as first,
        serve_process_async(database_url, tmp_path, drain, port=ports[1]) as second,
    ):
        with nginx_in_front(ports, ca.issue(), tmp_path / "nginx", client_tls) as proxy:
            ours = f"wss://127.0.0.1:{proxy.https_port}/ws"
            page_url = f"https://127.0.0.1:{proxy.https_port}/?socketURL={ours}"
            clients = [DzoneClient(page_url, reconnect_script=True, tls=client_tls, seed=n) for n in range(6)]
            for client in clients:
                client.start()
            try:
                for client in clients:
                    await settled(client, conn, GUILD, True)
                async with (
                    serve_process_async(database_url, tmp_path, drain, port=ports[2]),
                    serve_process_async(database_url, tmp_path, drain, port=ports[3]),
                ):
                    for old in (first, second):
                        old.process.send_signal(signal.SIGTERM)
                        assert await asyncio.to_thread(old.process.wait, 60) == 0, old.output()
                    await wait_for(
                        lambda: all(c.live and len(c.rejoin_gaps) == len(c.outages) > 0 for c in clients),
                        timeout=60,
                        message="every page back on a running replica",
                    )
                    await changes_reach_every_page(clients, conn)
            finally:
                await asyncio.gather(*(c.stop() for c in clients))
    print(f"\nrolling restart of 2 replicas behind nginx, {len(clients)} pages: {gaps(clients)}")
    for client in clients:
        assert set(client.opened) == {ours} and client.blocked == [], (client.opened, client.blocked)
