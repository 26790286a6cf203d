"""The documented reverse-proxy recipe, run: nginx ends TLS and forwards ``/ws`` upgrades to a real serve.

A real WebSocket client connects over wss:// (trusting the test CA only) through nginx, receives
server-list and server-join, and then a change made with SQL, as a d-zone viewer behind a proxy would.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
from pathlib import Path

import asyncpg
import pytest
from websockets.asyncio.client import connect

from tests.certs import LocalCA
from tests.nginx import nginx_in_front
from tests.serve_process import http_status, open_connections, serve_process
from tests.test_serve_support import Viewer, add_server, add_users
from tests.waiting import wait_for

A = "100000000000000001"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(5)}


async def test_wss_through_the_nginx_recipe(database_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await add_server(conn, A, "Proxied Guild", is_default=True)
        await add_users(conn, A, USERS)
        ca = LocalCA(tmp_path / "ca")
        pair = ca.issue()
        with (
            serve_process(database_url, tmp_path) as serve,
            nginx_in_front([serve.port], pair, tmp_path / "nginx", ca.client_context()) as proxy,
        ):
            page = await asyncio.to_thread(http_status, f"{proxy.base}/", ca.client_context())
            assert page == 200
            url = f"wss://127.0.0.1:{proxy.https_port}/ws"
            async with connect(url, ssl=ca.client_context(), open_timeout=10) as ws:
                viewer = Viewer(ws)
                listing = await viewer.expect("server-list")
                assert [s["name"] for s in listing["data"].values()] == ["Proxied Guild"]
                join = await viewer.join()
                assert set(join["data"]["users"]) == set(USERS)
                uid = next(iter(USERS))
                await conn.execute("UPDATE discord_users SET status = 'idle' WHERE user_id = $1", uid)
                frame = await viewer.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
                assert frame["data"]["status"] == "idle"
            # a path prefix works the same way (page /dzone/ -> socket /dzone/ws)
            async with connect(f"{url[:-3]}/dzone/ws", ssl=ca.client_context(), open_timeout=10) as ws:
                await Viewer(ws).expect("server-list")
            # a client that does not trust the CA is refused by nginx's handshake
            with pytest.raises(OSError):
                async with connect(url, open_timeout=10):
                    pass
            # plain HTTP on the proxy only redirects; nothing is served unencrypted
            plain = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=10)
            try:
                await asyncio.to_thread(plain.request, "GET", "/ws", headers={"Host": "dzone.example.org"})
                answer = await asyncio.to_thread(plain.getresponse)
                assert (answer.status, answer.getheader("Location")) == (301, "https://dzone.example.org/ws")
            finally:
                plain.close()
    finally:
        await conn.close()


async def test_a_draining_replica_behind_the_recipe(database_url: str, tmp_path: Path) -> None:
    """Rolling restart through nginx: the draining replica keeps its viewers, new ones go to the other.

    The sockets are closed at the end of the block (or by the serves' exit when an assertion fails).
    """
    conn = await asyncpg.connect(database_url)
    try:
        await add_server(conn, A, "Proxied Guild", is_default=True)
        await add_users(conn, A, USERS)
        ca = LocalCA(tmp_path / "ca")
        drain = {"DZONE_DRAIN_S": "600"}
        with (
            serve_process(database_url, tmp_path, drain) as first,
            serve_process(database_url, tmp_path, drain) as second,
            nginx_in_front(
                [first.port, second.port], ca.issue(), tmp_path / "nginx", ca.client_context()
            ) as proxy,
        ):
            url = f"wss://127.0.0.1:{proxy.https_port}/ws"

            async def viewer() -> Viewer:
                ws = await connect(url, ssl=ca.client_context(), open_timeout=10)
                opened = Viewer(ws)
                await opened.expect("server-list")
                await opened.join()
                return opened

            early = [await viewer(), await viewer()]  # nginx's round robin: one on each replica
            counts = await asyncio.to_thread(
                lambda: (open_connections(first.base), open_connections(second.base))
            )
            assert counts == (1, 1)
            first.process.send_signal(signal.SIGTERM)

            async def first_closed() -> bool:
                return await asyncio.to_thread(http_status, f"{first.base}/healthz") is None

            await wait_for(first_closed, timeout=5, message="the draining replica to stop accepting")
            late = [await viewer() for _ in range(4)]  # none refused: nginx tries the next replica
            assert await asyncio.to_thread(open_connections, second.base) == 5
            uid = next(iter(USERS))
            await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE user_id = $1", uid)
            for each in early + late:
                frame = await each.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
                assert frame["data"]["status"] == "dnd"
            for each in early + late:
                await each.ws.close()
    finally:
        await conn.close()
