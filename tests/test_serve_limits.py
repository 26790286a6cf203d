"""Bounded cost per socket, per address and per process: sockets that ask for big snapshots and never read
must not grow the serve's memory, nor slow the viewers who do read (issue 10's reproduction)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
import pytest

from tests.test_serve_support import Viewer, add_server, running
from tests.waiting import wait_for

BIG, SMALL = "100000000000000001", "100000000000000002"
MEMBERS = 2000
ATTACKERS, CONNECTS_EACH = 20, 30
READERS = 5


class ServeProcess:
    """``dzone serve`` as a child process, so its RSS is the serve's alone."""

    def __init__(self, database_url: str) -> None:
        env = {**os.environ, "DATABASE_URL": database_url, "DZONE_LOG_LEVEL": "info"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from dzone.cli import main; main()", "serve", "--port", "0"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "serving" in line:
                self.port = int(line.split("port=")[1].split()[0])
                break
        else:
            raise AssertionError("serve did not start")
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def serve_process(database_url: str) -> Iterator[ServeProcess]:
    process = ServeProcess(database_url)
    try:
        yield process
    finally:
        process.stop()


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


def open_non_reader(port: int, connects: int) -> socket.socket:
    """A socket with a tiny receive buffer that upgrades, sends ``connects`` connects, and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave the server-list unread in the kernel
    assert head.startswith(b"HTTP/1.1 101"), head
    frame = masked_text_frame(orjson.dumps({"type": "connect", "data": {"server": BIG}}))
    sock.sendall(frame * connects)
    return sock


async def seed(conn: asyncpg.Connection) -> None:
    await add_server(conn, BIG, "Big", is_default=True, hide_offline=False)
    await add_server(conn, SMALL, "Small", hide_offline=False)
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color)"
        " SELECT (300000000000000000 + g)::text, $1, 'member-with-a-longish-name-' || g, 'online', '#aabbcc'"
        " FROM generate_series(1, $2) g",
        BIG,
        MEMBERS,
    )
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color)"
        " SELECT (400000000000000000 + g)::text, $1, 'reader-' || g, 'online', '#aabbcc'"
        " FROM generate_series(1, 4) g",
        SMALL,
    )


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.slow
async def test_non_reading_sockets_cost_little_and_do_not_slow_readers(conn, serve_process: ServeProcess):
    await seed(conn)
    serve = serve_process
    latencies: list[float] = []
    stop = asyncio.Event()

    async def read(viewer: Viewer) -> None:
        while not stop.is_set():
            try:
                frame = await viewer.recv(timeout=0.5)
            except TimeoutError:
                continue
            name = frame["data"].get("username", "")
            if frame["type"] == "presence" and name.startswith("t"):
                latencies.append(time.monotonic() - float(name[1:]))

    async def write(writer: asyncpg.Connection) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await writer.execute(
                "UPDATE discord_users SET username = $1 WHERE server_id = $2 AND user_id = $3",
                f"t{time.monotonic():.6f}",
                SMALL,
                f"40000000000000000{1 + i % 4}",
            )
            await asyncio.sleep(0.01)  # the pace of the probe traffic, not synchronisation

    port_server = type("S", (), {"port": serve.port})()
    # One honest join of the big server first: its snapshot is then cached, a cost per server, not per socket.
    async with Viewer.open(port_server) as warm:
        await warm.expect("server-list")
        assert len((await warm.join(BIG))["data"]["users"]) == MEMBERS
    stack = contextlib.AsyncExitStack()
    readers = [await stack.enter_async_context(Viewer.open(port_server)) for _ in range(READERS)]
    for viewer in readers:
        await viewer.expect("server-list")
        await viewer.join(SMALL)
    tasks = [asyncio.create_task(read(v)) for v in readers] + [asyncio.create_task(write(conn))]
    sockets: list[socket.socket] = []
    try:
        await wait_for(lambda: len(latencies) >= 50, message="probe traffic flowing")
        baseline_rss, before = serve.rss(), len(latencies)
        connects_before = await serve.metric("dzone_serve_connect_requests_total")
        peak = baseline_rss

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, serve.rss())
                await asyncio.sleep(0.02)  # sampling period of the measurement

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        for _ in range(ATTACKERS):
            sockets.append(await asyncio.to_thread(open_non_reader, serve.port, CONNECTS_EACH))
        expected = connects_before + ATTACKERS * CONNECTS_EACH
        await wait_for(
            lambda: _at_least(serve, expected), timeout=30, message="every connect read by the serve"
        )
        handled = time.monotonic() - started
        # Keep measuring for a while after the last connect: buffers would grow from here on.
        settle_until = len(latencies) + 300
        await wait_for(lambda: len(latencies) >= settle_until, timeout=30, message="probe traffic after")
        stop.set()
        await sampler
        during = latencies[before:]
        grown = (peak - baseline_rss) / 2**20
        print(
            f"\nnon-reading sockets: {ATTACKERS} x {CONNECTS_EACH} connects handled in {handled:.2f}s; "
            f"RSS {baseline_rss / 2**20:.1f} -> peak {peak / 2**20:.1f} MiB (+{grown:.1f} MiB); "
            f"reader latency p50 {sorted(during)[len(during) // 2] * 1000:.1f} ms, "
            f"p99 {p99(during) * 1000:.1f} ms over {len(during)} events"
        )
        assert grown <= 10, f"RSS grew by {grown:.1f} MiB"
        assert p99(during) < 0.050, f"readers' p99 {p99(during) * 1000:.1f} ms"
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in sockets:
            sock.close()
        await stack.aclose()


async def _at_least(serve: ServeProcess, count: float) -> bool:
    return await serve.metric("dzone_serve_connect_requests_total") >= count


def read_text_frames_until(
    sock: socket.socket, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Read unmasked server text frames from a raw socket (after the handshake) up to ``last``."""
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    frames: list[dict[str, Any]] = []
    while not frames or not last(frames[-1]):
        first, second = take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", take(8))
        payload = take(length)
        if first & 0x0F == 0x1:
            frames.append(orjson.loads(payload))
    return frames


async def test_a_newer_join_replaces_an_unsent_older_one(database_url, conn):
    await seed(conn)
    async with running(database_url) as server:
        # Forty joins of the big server (more than the kernel's socket buffers absorb) ...
        sock = await asyncio.to_thread(open_non_reader, server.port, 40)
        small = masked_text_frame(orjson.dumps({"type": "connect", "data": {"server": SMALL}}))
        await asyncio.to_thread(sock.sendall, small)  # ... then one of the small one
        metrics = server.metrics
        try:
            await wait_for(lambda: metrics.connect_requests._value.get() >= 41, message="41 connects read")
            sock.settimeout(10)
            frames = await asyncio.to_thread(
                read_text_frames_until,
                sock,
                lambda f: f["type"] == "server-join" and f["data"]["serverName"] == "Small",
            )
        finally:
            sock.close()
    assert frames[0]["type"] == "server-list"
    joins = [f["data"]["serverName"] for f in frames if f["type"] == "server-join"]
    # What fitted the write budget was written; the joins that waited were replaced, not queued.
    assert joins[-1] == "Small" and 1 <= joins.count("Big") < 40, joins
    assert metrics.joins_deferred._value.get() >= 1
    assert metrics.joins_replaced._value.get() == 40 - joins.count("Big")
    print(f"\n40 big joins then 1 small on a non-reading socket: {joins.count('Big')} big snapshots written")


async def test_a_waiting_join_is_decided_again_when_it_is_written(database_url, conn):
    """Access changes while a join waits for write budget: the join answers the error, never the snapshot."""
    await seed(conn)
    async with running(database_url) as server:
        sock = await asyncio.to_thread(open_non_reader, server.port, 40)
        metrics, hub = server.metrics, server._hub
        assert hub is not None
        try:
            await wait_for(lambda: metrics.connect_requests._value.get() >= 40, message="40 connects read")
            await wait_for(lambda: hub.sessions.deferred, message="a join waiting for budget")
            await conn.execute("UPDATE discord_servers SET passworded = TRUE WHERE server_id = $1", BIG)
            await wait_for(
                lambda: (info := hub.info(BIG)) is not None and info.passworded, message="flip seen"
            )
            sock.settimeout(10)
            frames = await asyncio.to_thread(
                read_text_frames_until,
                sock,
                lambda f: f["type"] == "error" and "requires" in f["data"]["message"],
            )
        finally:
            sock.close()
    kinds = [f["type"] for f in frames]
    lost = kinds.index("error")
    assert frames[lost]["data"]["message"].startswith("You no longer have access")  # the joined viewer is cut
    assert kinds[lost + 1 :] == [
        "error"
    ]  # and the waiting join answers the error, no snapshot after the flip
