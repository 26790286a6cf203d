"""serve/handover.py without a serve: the spread of closes, the subprotocol choice, the replacement probe."""

from __future__ import annotations

import asyncio

from websockets.typing import Subprotocol

from serve import handover
from tests.serve_process import free_port


def test_closes_are_spread_evenly_from_now_and_none_at_the_end() -> None:
    assert handover.spread(4, 10.0, 18.0) == [10.0, 12.0, 14.0, 16.0]
    assert handover.spread(0, 10.0, 18.0) == []
    assert handover.spread(3, 10.0, 9.0) == [10.0, 10.0, 10.0]  # a deadline already past: at once


def test_only_our_script_is_selected_as_a_subprotocol() -> None:
    pick = handover.select_subprotocol
    assert pick(None, [Subprotocol("chat"), Subprotocol(handover.RECONNECTS)]) == handover.RECONNECTS  # type: ignore[arg-type]
    assert pick(None, [Subprotocol("chat")]) is None  # type: ignore[arg-type]
    assert pick(None, []) is None  # type: ignore[arg-type]


def test_a_wildcard_bind_is_probed_on_loopback() -> None:
    assert [handover.probe_host(h) for h in ("0.0.0.0", "::", "", "10.0.0.5")] == [
        "127.0.0.1",
        "::1",
        "127.0.0.1",
        "10.0.0.5",
    ]


async def _answering(status_line: bytes | None) -> asyncio.Server:
    """A port that answers ``status_line`` to any request, or reads and never answers (None)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if status_line is None:
            await asyncio.Event().wait()  # a stalled peer
            return
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_only_a_200_counts_as_a_replacement_and_a_stall_is_bounded() -> None:
    for line, ready in ((b"HTTP/1.1 200 OK", True), (b"HTTP/1.1 503 Service Unavailable", False)):
        server = await _answering(line)
        port = server.sockets[0].getsockname()[1]
        async with server:
            assert await handover.answers_ready("127.0.0.1", port, tls=False) is ready
    assert await handover.answers_ready("127.0.0.1", free_port(), tls=False) is False  # nobody there
    stalled = await _answering(None)
    port = stalled.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await handover.answers_ready("127.0.0.1", port, tls=False, timeout=0.3) is False
    assert await handover.wait_for_replacement("127.0.0.1", port, False, loop.time() + 0.5) is False
    assert loop.time() - started < 5  # bounded by the deadline, not by the stalled peer
    stalled.close()
