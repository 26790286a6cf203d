"""Restarts that do not strand viewers: SIGTERM to a real ``dzone serve`` drains it (docs/deploy.md).

/readyz turns 503 at once, new sockets are refused with 503, plain HTTP still answers, joined viewers keep
receiving the changes the triggers announce, and after ``DZONE_DRAIN_S`` they are closed with 1001 and the
process exits 0. A second signal, or the last viewer leaving, ends the drain early.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.serve_process import ServeProcess, http_status, open_connections, serve_process, status_json
from tests.test_serve_support import Viewer, add_server, add_users
from tests.waiting import wait_for

A = "100000000000000001"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(4)}


async def seed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await add_server(conn, A, is_default=True)
        await add_users(conn, A, USERS)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def joined(serve: ServeProcess) -> AsyncIterator[Viewer]:
    async with connect(serve.ws_url, open_timeout=10) as ws:
        viewer = Viewer(ws)
        await viewer.expect("server-list")
        await viewer.join()
        yield viewer


async def status_of(url: str) -> int | None:
    return await asyncio.to_thread(http_status, url)


async def readyz_turns_503(serve: ServeProcess) -> None:
    """The signal is handled between two polls; nothing may answer 200 after the first 503."""

    async def unready() -> bool:
        return await status_of(f"{serve.base}/readyz") == 503

    await wait_for(unready, timeout=3, message="/readyz to answer 503")


async def close_code(viewer: Viewer, timeout: float) -> int | None:
    """Read until the server closes the socket; the code it sent."""
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            await viewer.recv(timeout)
    return caught.value.rcvd.code if caught.value.rcvd else None


async def exit_code(serve: ServeProcess, timeout: float) -> int:
    return await asyncio.to_thread(serve.process.wait, timeout)


async def test_sigterm_drains_then_closes_with_1001_and_exits_0(database_url: str, tmp_path: Path) -> None:
    drain_s = 6.0
    await seed(database_url)
    with serve_process(database_url, tmp_path, {"DZONE_DRAIN_S": str(drain_s)}) as serve:
        async with joined(serve) as first, joined(serve) as second:
            signalled = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            await readyz_turns_503(serve)
            readyz_503_after = time.monotonic() - signalled

            # the viewers keep receiving what the triggers announce
            uid = next(iter(USERS))
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE user_id = $1", uid)
            finally:
                await conn.close()
            for viewer in (first, second):
                frame = await viewer.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
                assert frame["data"]["status"] == "dnd"

            # a new socket is refused; plain HTTP still answers (a page load, the balancer's probes)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(serve.ws_url, open_timeout=5):
                    pass
            assert refused.value.response.status_code == 503
            assert await status_of(f"{serve.base}/healthz") == 200
            status = await asyncio.to_thread(status_json, serve.base)
            assert (status["draining"], status["ready"]) == (True, False)
            assert await asyncio.to_thread(open_connections, serve.base) == 2
            assert serve.process.poll() is None, "exited before the drain was over"

            assert await close_code(first, timeout=drain_s + 15) == 1001
            assert await close_code(second, timeout=5) == 1001
            closed_after = time.monotonic() - signalled
        assert await exit_code(serve, 15) == 0
    print(f"readyz 503 after {readyz_503_after:.3f}s; viewers closed after {closed_after:.2f}s")
    assert closed_after >= drain_s - 0.5, "the drain was cut short"


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_ends_the_drain_at_once(
    database_url: str, tmp_path: Path, second: signal.Signals
) -> None:
    await seed(database_url)
    with serve_process(database_url, tmp_path, {"DZONE_DRAIN_S": "600"}) as serve:
        async with joined(serve) as viewer:
            serve.process.send_signal(signal.SIGTERM)
            await readyz_turns_503(serve)
            signalled = time.monotonic()
            serve.process.send_signal(second)
            assert await close_code(viewer, timeout=30) == 1001
        assert await exit_code(serve, 30) == 0
        print(f"closed {time.monotonic() - signalled:.2f}s after the second signal")


async def test_the_drain_ends_when_the_last_viewer_leaves(database_url: str, tmp_path: Path) -> None:
    await seed(database_url)
    with serve_process(database_url, tmp_path, {"DZONE_DRAIN_S": "600"}) as serve:
        async with joined(serve):
            serve.process.send_signal(signal.SIGTERM)
            await readyz_turns_503(serve)
            assert serve.process.poll() is None
            left = time.monotonic()
        assert await exit_code(serve, 30) == 0
        print(f"exited {time.monotonic() - left:.2f}s after the last viewer left")


async def test_a_third_signal_drops_sockets_that_do_not_answer_the_close(
    database_url: str, tmp_path: Path
) -> None:
    """A client that never answers the close handshake would hold the exit for websockets' close timeout."""
    await seed(database_url)
    with serve_process(database_url, tmp_path, {"DZONE_DRAIN_S": "600"}) as serve:
        reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head  # from now on it reads nothing and answers nothing
        serve.process.send_signal(signal.SIGTERM)
        await readyz_turns_503(serve)
        serve.process.send_signal(signal.SIGTERM)  # ends the drain: the close handshake starts, unanswered
        await wait_for(lambda: "drained" in serve.output(), message="the drain to end")
        third = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        assert await exit_code(serve, 30) == 0
        print(f"exited {time.monotonic() - third:.2f}s after the third signal")
        assert "closing_abruptly" in serve.output()
        writer.close()
