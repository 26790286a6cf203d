"""The documented reverse-proxy recipe, run: nginx ends TLS and forwards ``/ws`` upgrades to a real serve.

A real WebSocket client connects over wss:// (trusting the test CA only) through nginx, receives
server-list and server-join, and then a change made with SQL, as a d-zone viewer behind a proxy would.
"""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path

import asyncpg
import pytest
from websockets.asyncio.client import connect

from tests.certs import LocalCA
from tests.nginx import nginx_in_front
from tests.serve_process import http_status, serve_process
from tests.test_serve_support import Viewer, add_server, add_users

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
            nginx_in_front(serve.port, pair, tmp_path / "nginx", ca.client_context()) as proxy,
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
