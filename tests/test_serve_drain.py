"""Restarts that do not strand viewers: SIGTERM to a real ``dzone serve`` drains it (docs/deploy.md).

The serve stops accepting at once (its listener closes: the port is free for a replacement, which binds it
with SO_REUSEPORT), joined viewers keep receiving the changes the triggers announce, and when a replacement
answers on the port they are closed with 1012 one by one over the rest of the drain; without one, they are
closed with 1001 after ``DZONE_DRAIN_S``. The process exits 0. A second signal, or the last viewer leaving,
ends the drain early.
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
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from serve.handover import RECONNECTS
from tests.serve_process import ServeProcess, serve_process, serve_process_async, stops_accepting
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
async def joined(serve: ServeProcess, comes_back: bool = False) -> AsyncIterator[Viewer]:
    """A joined viewer; ``comes_back``: offers the subprotocol of our reconnect script, as its page does."""
    offered = [Subprotocol(RECONNECTS)] if comes_back else None
    async with connect(serve.ws_url, open_timeout=10, subprotocols=offered) as ws:
        viewer = Viewer(ws)
        await viewer.expect("server-list")
        await viewer.join()
        yield viewer


async def a_change_reaches(database_url: str, viewers: list[Viewer], status: str) -> str:
    """A member's status changed with SQL reaches every viewer (the triggers announce it); its uid."""
    uid = next(iter(USERS))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE discord_users SET status = $2 WHERE user_id = $1", uid, status)
    finally:
        await conn.close()
    for viewer in viewers:
        frame = await viewer.until(lambda f: f["type"] == "presence" and f["data"]["uid"] == uid)
        assert frame["data"]["status"] == status
    return uid


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
            await stops_accepting(serve)
            refused_after = time.monotonic() - signalled

            # the viewers keep receiving what the triggers announce
            await a_change_reaches(database_url, [first, second], "dnd")

            # a new socket finds nobody: a balancer moves on at once, a replacement may bind the port
            with pytest.raises(OSError):
                async with connect(serve.ws_url, open_timeout=5):
                    pass
            assert '"viewers": 2' in serve.output() or "viewers=2" in serve.output()
            assert serve.process.poll() is None, "exited before the drain was over"

            assert await close_code(first, timeout=drain_s + 15) == 1001
            assert await close_code(second, timeout=5) == 1001
            closed_after = time.monotonic() - signalled
        assert await exit_code(serve, 15) == 0
    print(f"port refused after {refused_after:.3f}s; viewers closed after {closed_after:.2f}s")
    assert closed_after >= drain_s - 0.5, "the drain was cut short"


async def test_a_replacement_on_the_port_takes_the_viewers_spread_over_the_drain(
    database_url: str, tmp_path: Path
) -> None:
    """A new serve on the same port (SO_REUSEPORT) while the old drains: the old closes the viewers whose page
    comes back with 1012 only once the new one answers, one by one over the rest of the drain; each
    reconnects to the port. A viewer without our script keeps its socket to the end of the drain (1001)."""
    drain_s, count = 10.0, 3
    await seed(database_url)
    async with (
        serve_process_async(database_url, tmp_path, {"DZONE_DRAIN_S": str(drain_s)}) as old,
        contextlib.AsyncExitStack() as stack,
    ):
        viewers = [await stack.enter_async_context(joined(old, comes_back=True)) for _ in range(count)]
        plain = await stack.enter_async_context(joined(old))
        signalled = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        await stops_accepting(old)
        # nobody to hand over to: the viewers are kept, changes included
        uid = await a_change_reaches(database_url, [*viewers, plain], "idle")
        async with serve_process_async(database_url, tmp_path, port=old.port) as new:
            ready_at = time.monotonic() - signalled

            async def closed_then_back(viewer: Viewer) -> tuple[float, int | None]:
                code = await close_code(viewer, timeout=drain_s + 15)
                at = time.monotonic() - signalled
                async with connect(new.ws_url, open_timeout=10) as ws:  # the page's socket, again
                    back = Viewer(ws)
                    await back.expect("server-list")
                    assert (await back.join())["data"]["users"][uid]["status"] == "idle"
                return at, code

            closes = sorted(await asyncio.gather(*(closed_then_back(v) for v in viewers)))
            assert await close_code(plain, timeout=drain_s + 15) == 1001
            plain_closed = time.monotonic() - signalled
            assert await exit_code(old, 15) == 0
            assert new.process.poll() is None
    times = [t for t, _ in closes]
    print(
        f"replacement ready {ready_at:.2f}s after SIGTERM; viewers closed at "
        + ", ".join(f"{t:.2f}s" for t in times)
    )
    assert [code for _, code in closes] == [1012] * count
    assert plain_closed >= drain_s - 0.5, "a page without our script was closed before the drain's end"
    assert times == sorted(times) and times[0] >= ready_at - 1.0  # not before a replacement answered
    rest = drain_s - ready_at
    assert times[-1] - times[0] >= rest / 3, "the closes were not spread over the rest of the drain"
    assert "handing_over" in old.output()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_ends_the_drain_at_once(
    database_url: str, tmp_path: Path, second: signal.Signals
) -> None:
    await seed(database_url)
    with serve_process(database_url, tmp_path, {"DZONE_DRAIN_S": "600"}) as serve:
        async with joined(serve) as viewer:
            serve.process.send_signal(signal.SIGTERM)
            await stops_accepting(serve)
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
            await stops_accepting(serve)
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
        await stops_accepting(serve)
        serve.process.send_signal(signal.SIGTERM)  # ends the drain: the close handshake starts, unanswered
        await wait_for(lambda: "drained" in serve.output(), message="the drain to end")
        third = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        assert await exit_code(serve, 30) == 0
        print(f"exited {time.monotonic() - third:.2f}s after the third signal")
        assert "closing_abruptly" in serve.output()
        writer.close()
