"""Listener resilience: a killed or restarted LISTEN connection, changes made during the gap, and readiness."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest

from tests.test_serve_support import Viewer, add_server, add_users, db_world, running
from tests.waiting import wait_for

A, B = "100000000000000001", "100000000000000002"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(6)}


async def ready_status(server) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/readyz") as resp,
    ):
        return resp.status


async def change_rows(conn: asyncpg.Connection) -> None:
    """Changes of every kind on A and B: status, name, delete, insert, hidden offline."""
    uids = list(USERS)
    await conn.execute(
        "UPDATE discord_users SET status = 'dnd' WHERE server_id = $1 AND user_id = $2", A, uids[0]
    )
    await conn.execute(
        "UPDATE discord_users SET username = 'renamed' WHERE server_id = $1 AND user_id = $2", A, uids[1]
    )
    await conn.execute("DELETE FROM discord_users WHERE server_id = $1 AND user_id = $2", A, uids[2])
    await conn.execute(
        "UPDATE discord_users SET status = 'offline' WHERE server_id = $1 AND user_id = $2", A, uids[3]
    )
    await add_users(conn, A, {"300000000000000001": ("newbie", "idle", "#445566")})
    await conn.execute("UPDATE discord_users SET status = 'idle' WHERE server_id = $1", B)


async def seed(conn: asyncpg.Connection) -> None:
    await add_server(conn, A, "Alpha", is_default=True, hide_offline=True)
    await add_server(conn, B, "Bravo", hide_offline=False)
    await add_users(conn, A, USERS)
    await add_users(conn, B, USERS)


async def converge(viewer: Viewer, conn: asyncpg.Connection, server_id: str, hide: bool) -> None:
    truth = await db_world(conn, server_id, hide)

    async def read_until_equal() -> None:
        while viewer.world != truth:
            frame = await viewer.recv()
            assert frame["type"] == "presence" and frame["server"] == server_id, frame

    await asyncio.wait_for(read_until_equal(), 15)


async def test_terminated_listener_reconnects_and_viewers_converge(pg, database_url, conn):
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as a, Viewer.open(server) as b:
        await a.expect("server-list")
        await b.expect("server-list")
        await a.join(A)
        await b.join(B)
        listener = server._listener
        assert listener is not None and listener.conn is not None
        pid = listener.conn.get_server_pid()
        dbname = database_url.rsplit("/", 1)[1]
        # Keep the listener out while rows change: the changes fall in the gap for sure.
        admin = await asyncpg.connect(pg.admin_url)
        await admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            await wait_for(_503(server), message="readyz 503 during the outage")
            await change_rows(conn)
        finally:
            await admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
            await admin.close()
        await converge(a, conn, A, hide=True)
        await converge(b, conn, B, hide=False)
        await wait_for(_200(server), message="ready again")
        assert server.metrics.listener_reconnects._value.get() >= 1
        # and the relay works again
        await conn.execute("UPDATE discord_users SET status = 'online' WHERE server_id = $1", B)
        await converge(b, conn, B, hide=False)


def _503(server):
    async def check() -> bool:
        return await ready_status(server) == 503

    return check


def _200(server):
    async def check() -> bool:
        return await ready_status(server) == 200

    return check


@pytest.mark.slow
async def test_postgres_restart_viewers_converge_and_ready_reports_outage(pg, database_url, conn):
    if pg.local is None:
        pytest.skip("needs the embedded PostgreSQL (restart)")
    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as a:
        await a.expect("server-list")
        await a.join(A)
        restart = asyncio.create_task(asyncio.to_thread(pg.restart, 1.5))
        await wait_for(_503(server), timeout=10, message="readyz 503 while PostgreSQL is down")
        # the last good world is still served while the database is down
        async with Viewer.open(server) as late:
            await late.expect("server-list")
            assert set((await late.join(A))["data"]["users"]) == set(USERS)
        await restart
        writer = await asyncpg.connect(database_url)
        try:
            await change_rows(writer)
            await converge(a, writer, A, hide=True)
        finally:
            await writer.close()
        await wait_for(_200(server), timeout=15, message="ready after the restart")
