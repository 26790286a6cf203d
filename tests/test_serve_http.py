"""Rule 19 (HTTP on the WebSocket port), rule 20 (limits) and graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from serve import http
from tests.test_serve_support import Viewer, add_server, running
from tests.waiting import wait_for

A = "100000000000000001"


async def get(server, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{server.port}{path}") as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_version_health_ready_metrics(database_url, conn):
    await add_server(conn, A, "Alpha")
    async with running(database_url) as server:
        status, headers, body = await get(server, "/api/version")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert body == b'{"version":"' + server.version.encode() + b'"}'
        assert (await get(server, "/healthz"))[0] == 200
        status, _, body = await get(server, "/readyz")
        assert status == 200 and b'"ready":true' in body
        async with Viewer.open(server) as v:
            await v.expect("server-list")
            await v.join()
            status, headers, body = await get(server, "/metrics")
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            assert b"dzone_serve_connections 1.0" in body
            assert b"dzone_serve_joins_total 1.0" in body


async def test_status_page_and_head_and_methods(database_url, conn):
    await add_server(conn, A, "Alpha")
    async with running(database_url) as server:
        status, headers, body = await get(server, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert int(headers["Content-Length"]) == len(body) and b"<html" in body
        assert headers["Cache-Control"] == "no-cache"
        status, headers, body = await get(server, "/", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100
        assert (await get(server, "/", "POST"))[0] == 405
        status, _, body = await get(server, "/api/status")
        assert status == 200 and b'"Alpha"' in body
        assert (await get(server, "/nope.txt"))[0] == 404


async def test_static_dir_is_served_and_never_escaped(database_url, conn, tmp_path: Path):
    await add_server(conn, A, "Alpha")
    dist = tmp_path / "dist"
    (dist / "static").mkdir(parents=True)
    (dist / "index.html").write_text("<h1>d-zone</h1>")
    (dist / "static" / "bundle.js").write_text("console.log(1)")
    sibling = tmp_path / "dist-secret"
    sibling.mkdir()
    (sibling / "secret.txt").write_text("secret")
    (tmp_path / "outside.txt").write_text("outside")
    async with running(database_url, static_dir=str(dist)) as server:
        status, headers, body = await get(server, "/?s=alpha")
        assert status == 200 and body == b'<script src="dzone-reconnect.js"></script>\n<h1>d-zone</h1>'
        status, headers, _ = await get(server, "/", "HEAD")
        assert status == 200 and int(headers["Content-Length"]) == len(body)
        status, headers, script = await get(server, "/dzone-reconnect.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert b"class ReconnectingWebSocket" in script
        status, headers, body = await get(server, "/static/bundle.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert headers["Cache-Control"].startswith("public")
        for path in (
            "/../dist-secret/secret.txt",
            "/%2e%2e/dist-secret/secret.txt",
            "/..%2foutside.txt",
            "/static/../../outside.txt",
            "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        ):
            status, _, body = await get(server, path)
            assert status == 404 and b"secret" not in body and b"outside" not in body, path


async def test_connection_limits_refuse_the_upgrade(database_url, conn):
    await add_server(conn, A, "Alpha")
    async with running(database_url, max_connections_per_ip=2) as server:
        async with Viewer.open(server) as v1, Viewer.open(server) as v2:
            await v1.expect("server-list")
            await v2.expect("server-list")
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"ws://127.0.0.1:{server.port}/"):
                    pass
            assert caught.value.response.status_code == 429
        # freed again once they close
        await wait_for(lambda: not server.connections, message="sockets released")
        async with Viewer.open(server) as v3:
            await v3.expect("server-list")
    async with running(database_url, max_connections=1) as server, Viewer.open(server) as v1:
        await v1.expect("server-list")
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://127.0.0.1:{server.port}/"):
                pass
        assert caught.value.response.status_code == 503


async def test_origin_allow_list(database_url, conn):
    await add_server(conn, A, "Alpha")
    async with running(database_url, allowed_origins=["https://dzone.example"]) as server:
        async with Viewer.open(server, origin="https://dzone.example") as v:
            await v.expect("server-list")
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://127.0.0.1:{server.port}/", origin=Origin("https://evil.example")):
                pass
        assert caught.value.response.status_code == 403


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame with an all-zero mask (so the payload goes as is); payload < 126 bytes."""
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def test_a_viewer_that_stops_reading_is_dropped_without_slowing_others(database_url, conn):
    await add_server(conn, A, "Alpha")
    async with running(database_url, write_buffer_bytes=4096, slow_viewer_grace_s=0.2) as server:
        # A raw handshake with a tiny receive buffer; then this client never reads again.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + masked_text_frame(b'{"type":"connect","data":{}}')
        )
        await writer.drain()
        async with Viewer.open(server) as healthy:
            await healthy.expect("server-list")
            await healthy.join()
            hub = server._hub
            assert hub is not None
            await wait_for(lambda: len(hub.states[A].viewers) == 2, message="both joined")
            big = "x" * 4000
            sent = 0
            while len(server._hub.states[A].viewers) == 2:  # type: ignore[union-attr]
                for i in range(200):
                    await server.broadcast_presence(
                        A,
                        f"5{i:017d}",
                        ("online", "idle")[sent // 200 % 2],
                        username=big,
                        role_color="#000000",
                    )
                    sent += 1
                    # the healthy viewer keeps up all the time (a server-join when its world is full: rule 23)
                    assert (await healthy.recv())["type"] in ("presence", "server-join")
                assert sent < 200_000, "the stuck viewer was never dropped"
                await asyncio.sleep(0.05)  # give the grace timer a turn of the loop
            assert server.metrics.slow_viewers_dropped._value.get() == 1
        writer.close()


def test_cli_serves_and_exits_0_on_sigterm(database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": database_url, "DZONE_LOG_LEVEL": "info", "DZONE_DRAIN_S": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dzone.cli", "serve", "--port", "0"]
        if False
        else [sys.executable, "-c", "from dzone.cli import main; main()", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving" in line:
                port = int(line.split("port=")[1].split()[0])
                break
        assert port, "server did not start"

        async def viewer_gets_1001() -> int:
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.recv()
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as caught:
                    await asyncio.wait_for(ws.recv(), 10)
                assert caught.value.rcvd is not None
                return caught.value.rcvd.code

        assert asyncio.run(viewer_gets_1001()) == 1001
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def raw_status(server, target: bytes) -> int:
    """Send one GET with ``target`` as the raw request-target bytes; the answer's status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1]) if status_line else 0  # 0: closed without an answer


@pytest.mark.parametrize(
    "target",
    [
        b"/" + b"a" * 300,  # one segment longer than NAME_MAX (OSError 36 before)
        b"/" + b"a" * 300 + b".js",
        b"/" + b"/".join([b"abcdefgh"] * 700),  # longer than PATH_MAX in total
        b"/" + b"/".join([b"x"] * 2000),  # many segments
        b"/%00",
        b"/a%00b/index.html",
        b"/%zz%",
        b"/%",
        b"/%ff%fe",  # percent-encoded bytes that are not UTF-8
        b"/%ed%a0%80",  # an encoded surrogate
        b"/" + b"%2e%2e/" * 50 + b"etc/passwd",
        b"/" + b"%41" * 2000,
        b"//[x",  # urlsplit would raise "Invalid IPv6 URL"
        b"http://[::1/index.html",
    ],
)
async def test_any_path_is_answered_4xx_never_500(database_url, conn, target: bytes, caplog):
    await add_server(conn, A, "Alpha")
    async with running(database_url) as server:
        status = await raw_status(server, target)
        assert 400 <= status < 500, (target[:40], status)
        assert await raw_status(server, b"/api/version") == 200  # and the server is fine afterwards
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("target", [b"/\xff\xfe", b"/\xc3\xa9t\xc3\xa9", b"/a\x00b"])
async def test_raw_bytes_that_are_not_http_are_refused_without_an_error(database_url, conn, target, caplog):
    """A request-target must be ASCII (RFC 9112); websockets' parser closes such a request unanswered."""
    await add_server(conn, A, "Alpha")
    async with running(database_url) as server:
        status = await raw_status(server, target)
        assert status == 0 or 400 <= status < 500, status
        assert await raw_status(server, b"/api/version") == 200
    assert "Traceback" not in caplog.text


async def test_status_describes_passworded_servers_only_as_the_server_list_does(database_url, conn):
    locked = "100000000000000009"
    await add_server(conn, A, "Alpha", is_default=True, hide_offline=False)
    await add_server(conn, locked, "Staff room", passworded=True, alias="staff", oauth_client_id="77")
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color)"
        " SELECT (200000000000000000 + g)::text, s, 'u' || g, 'online', '#000000'"
        " FROM generate_series(1, 3) g, unnest($1::text[]) s",
        [A, locked],
    )
    async with running(database_url) as server, Viewer.open(server) as v:
        list_frame = await v.expect("server-list")
        await v.join()
        status, _, body = await get(server, "/api/status")
    assert status == 200
    entries = {e["id"]: e for e in orjson.loads(body)["servers"]}
    assert entries["staff"] == list_frame["data"]["staff"]  # exactly the server-list entry, no counts
    assert entries[A] == {**list_frame["data"][A], "viewers": 1, "members": 3}
    assert "connections" not in orjson.loads(body)


def test_the_reconnect_script_goes_before_the_first_script() -> None:
    bundle = b'<html><head><title>D-Zone</title></head><body><script src="static/bundle.js"></script></body>'
    assert http.with_reconnect_script(bundle) == bundle.replace(
        b"<script", b'<script src="dzone-reconnect.js"></script>\n<script', 1
    )
    no_script = b"<!DOCTYPE html><HEAD lang=en><title>t</title></HEAD><body></body>"
    assert http.with_reconnect_script(no_script).startswith(
        b'<!DOCTYPE html><HEAD lang=en><script src="dzone-reconnect.js"></script>\n<title>'
    )
    assert [http.is_client_page(p) for p in ("/", "/index.html", "/other.html", "/sub/")] == [
        True,
        True,
        False,
        False,
    ]
