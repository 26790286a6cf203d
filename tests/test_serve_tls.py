"""Native TLS: HTTP and WebSocket on one TLS port, certbot-style renewals picked up without dropping viewers,
and a clear error naming the file for every bad pair. Real sockets, real OpenSSL, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

from serve import WebSocketServer
from serve.api import ServeError
from tests.certs import LocalCA, ServerPair, peer_serial
from tests.serve_process import http_status
from tests.test_serve_support import Viewer, add_server, add_users, running, settings
from tests.waiting import wait_for

A = "100000000000000001"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(3)}


def tls_settings(pair: ServerPair, **extra: Any) -> dict[str, Any]:
    return {"tls_cert_file": str(pair.cert_file), "tls_key_file": str(pair.key_file), **extra}


@contextlib.asynccontextmanager
async def wss_viewer(server: WebSocketServer, ca: LocalCA) -> AsyncIterator[Viewer]:
    async with connect(f"wss://127.0.0.1:{server.port}/ws", ssl=ca.client_context(), open_timeout=5) as ws:
        yield Viewer(ws)


def handshake_serial(port: int, ca: LocalCA, **context_options: Any) -> int:
    """A fresh TLS handshake (verified against the CA, as 127.0.0.1): the serial the server presented."""
    context = ca.client_context()
    for name, value in context_options.items():
        setattr(context, name, value)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return peer_serial(tls.getpeercert(binary_form=True))


def certbot_live(live: Path, pair: ServerPair) -> ServerPair:
    """certbot's layout: live/*.pem are symlinks into archive/, switched atomically on renewal."""
    live.mkdir(exist_ok=True)
    for target in (pair.cert_file, pair.key_file):
        link = live / target.name
        staged = live / f".{target.name}.new"
        staged.symlink_to(target)
        os.replace(staged, link)
    return ServerPair(live / pair.cert_file.name, live / pair.key_file.name, pair.serial)


async def test_http_and_websocket_share_the_tls_port(database_url, conn, tmp_path):
    ca = LocalCA(tmp_path)
    pair = ca.issue()
    await add_server(conn, A, is_default=True)
    await add_users(conn, A, USERS)
    async with running(database_url, **tls_settings(pair)) as server:
        url = f"https://127.0.0.1:{server.port}"
        assert await asyncio.to_thread(http_status, f"{url}/api/version", ca.client_context()) == 200
        assert await asyncio.to_thread(http_status, f"{url}/readyz", ca.client_context()) == 200
        async with wss_viewer(server, ca) as viewer:
            await viewer.expect("server-list")
            join = await viewer.join()
            assert set(join["data"]["users"]) == set(USERS)
        # plain ws:// and an untrusting client are both refused by the handshake
        with pytest.raises(InvalidMessage):  # the TLS port never answers plain HTTP
            async with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as plain:
                await plain.recv()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(handshake_serial, server.port, LocalCA(tmp_path / "other"))


async def test_renewal_reaches_new_handshakes_and_keeps_viewers(database_url, conn, tmp_path):
    ca = LocalCA(tmp_path)
    first = ca.issue("archive1")
    live = certbot_live(tmp_path / "live", first)
    await add_server(conn, A, is_default=True)
    await add_users(conn, A, USERS)
    overrides = tls_settings(live, tls_reload_interval_s=0.05)
    async with running(database_url, **overrides) as server, wss_viewer(server, ca) as viewer:
        assert server.tls is not None
        await viewer.expect("server-list")
        await viewer.join()
        assert await asyncio.to_thread(handshake_serial, server.port, ca) == first.serial

        # certbot renews: new files in archive/, then live/'s links switched (new key, new serial)
        renewed = ca.issue("archive2")
        started = time.monotonic()
        certbot_live(tmp_path / "live", renewed)

        async def renewed_in_use() -> bool:
            return await asyncio.to_thread(handshake_serial, server.port, ca) == renewed.serial

        await wait_for(renewed_in_use, message="new handshakes to present the renewed certificate")
        print(f"renewal in use {time.monotonic() - started:.2f}s after the files changed")
        # the viewer connected before the renewal is still served
        uid = next(iter(USERS))
        await conn.execute("UPDATE discord_users SET status = 'idle' WHERE user_id = $1", uid)
        frame = await viewer.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
        assert frame["data"]["status"] == "idle"

        # a broken renewal (truncated certificate, then a key of another pair) is logged, the pair kept
        live.cert_file.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
        await wait_for(lambda: server.tls is not None and server.tls.failures == 1, message="1st failure")
        other = ca.issue("other")
        live.cert_file.write_bytes(other.cert_file.read_bytes())  # the key is still the renewed one
        await wait_for(lambda: server.tls is not None and server.tls.failures == 2, message="2nd failure")
        assert await asyncio.to_thread(handshake_serial, server.port, ca) == renewed.serial
        assert server.tls.reloads == 1
        await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE user_id = $1", uid)
        frame = await viewer.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
        assert frame["data"]["status"] == "dnd"


async def test_encrypted_key_and_minimum_version(database_url, conn, tmp_path):
    ca = LocalCA(tmp_path)
    pair = ca.issue(password=b"s3cret")
    password_file = tmp_path / "key-password"
    password_file.write_text("s3cret\n")
    await add_server(conn, A, is_default=True)
    overrides = tls_settings(pair, tls_key_password_file=str(password_file), tls_min_version="1.3")
    async with running(database_url, **overrides) as server:
        assert await asyncio.to_thread(handshake_serial, server.port, ca) == pair.serial
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(handshake_serial, server.port, ca, maximum_version=ssl.TLSVersion.TLSv1_2)


def _bad_pairs(tmp_path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (TLS settings, text the error must contain)."""
    ca = LocalCA(tmp_path)
    good, other = ca.issue(), ca.issue("other")
    encrypted = ca.issue("encrypted", password=b"right")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong\n")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    return {
        "missing cert": (
            tls_settings(ServerPair(missing, good.key_file, 0)),
            f"DZONE_TLS_CERT_FILE {missing}",
        ),
        "cert is a directory": (
            tls_settings(ServerPair(tmp_path, good.key_file, 0)),
            f"CERT_FILE {tmp_path}",
        ),
        "missing key": (
            tls_settings(ServerPair(good.cert_file, missing, 0)),
            f"DZONE_TLS_KEY_FILE {missing}",
        ),
        "garbage cert": (tls_settings(ServerPair(garbage, good.key_file, 0)), f"CERT_FILE {garbage}: no PEM"),
        "key given as cert": (
            tls_settings(ServerPair(good.key_file, good.key_file, 0)),
            f"DZONE_TLS_CERT_FILE {good.key_file}",
        ),
        "garbage key": (
            tls_settings(ServerPair(good.cert_file, garbage, 0)),
            f"KEY_FILE {garbage}: no usable",
        ),
        "mismatched": (
            tls_settings(ServerPair(good.cert_file, other.key_file, 0)),
            f"DZONE_TLS_KEY_FILE {other.key_file}: does not match the certificate in {good.cert_file}",
        ),
        "wrong password": (
            tls_settings(encrypted, tls_key_password_file=str(wrong)),
            f"DZONE_TLS_KEY_FILE {encrypted.key_file}: cannot be decrypted",
        ),
        "encrypted without a password": (
            tls_settings(encrypted),
            f"DZONE_TLS_KEY_FILE {encrypted.key_file}: is encrypted: set DZONE_TLS_KEY_PASSWORD_FILE",
        ),
        "missing password file": (
            tls_settings(encrypted, tls_key_password_file=str(missing)),
            f"DZONE_TLS_KEY_PASSWORD_FILE {missing}",
        ),
        "bad ciphers": (tls_settings(good, tls_ciphers="NO-SUCH-CIPHER"), "DZONE_TLS_CIPHERS"),
    }


async def test_bad_pairs_fail_the_start_naming_the_file(tmp_path):
    for name, (overrides, expected) in _bad_pairs(tmp_path).items():
        server = WebSocketServer(port=0, host="127.0.0.1", settings=settings(None, **overrides))
        with pytest.raises(ServeError) as caught:
            await server.open()
        assert expected in str(caught.value), f"{name}: {caught.value}"
        assert server._server is None, name  # nothing was bound


def test_cli_reports_a_mismatched_pair_and_exits_1(database_url, tmp_path):
    ca = LocalCA(tmp_path)
    good, other = ca.issue(), ca.issue("other")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DZONE_TLS_CERT_FILE": str(good.cert_file),
        "DZONE_TLS_KEY_FILE": str(other.key_file),
    }
    result = subprocess.run(
        [sys.executable, "-m", "dzone", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"DZONE_TLS_KEY_FILE {other.key_file}: does not match" in result.stderr
