"""Line-JSON control channel between the comparison harness and a server runner, over loopback TCP.

Standard library only: the d-back runner imports it from d-back's own virtualenv. A runner answers
each request line with one reply line; a failed request answers ``{"error": ...}`` and the harness
raises :class:`ControlError` with it, so nothing fails silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Send = Callable[[Sequence[Any]], Awaitable[None]]
MAX_LINE = 64 * 1024 * 1024  # a reply carries at most a few thousand timestamps


class ControlError(Exception):
    """A runner refused or failed a control request, or could not be reached."""


async def serve_control(handler: Handler, port: int) -> asyncio.Server:
    """Answer request lines on 127.0.0.1:``port`` with ``handler``; a handler exception becomes an error reply."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = await handler(json.loads(line))
                except Exception as exc:  # reported to the harness, which raises it
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", port, limit=MAX_LINE)


async def inject(send: Send, events: Sequence[Sequence[Any]], rate: float | None) -> list[float]:
    """Call ``send`` for each event (at ``rate`` events/s, or back to back); the monotonic time of each call."""
    times: list[float] = []
    start = time.monotonic()
    for index, event in enumerate(events):
        if rate:
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        times.append(time.monotonic())
        await send(event)
    return times


class ControlClient:
    """The harness side: one connection to a runner's control port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, port: int, timeout: float, alive: Callable[[], bool]) -> ControlClient:
        """Connect, retrying while the runner starts (``alive`` False means it died: stop waiting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_LINE)
                return cls(reader, writer)
            except OSError as exc:
                if not alive():
                    raise ControlError("the runner exited before opening its control port") from exc
                if time.monotonic() > deadline:
                    raise ControlError(f"control port {port} not open after {timeout:g}s") from exc
                await asyncio.sleep(0.05)  # polling a child process that is starting up

    async def call(self, request: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        line = await asyncio.wait_for(self._reader.readline(), timeout)
        if not line:
            raise ControlError(f"runner closed the control channel during {request.get('cmd')!r}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ControlError(f"{request.get('cmd')!r} failed in the runner: {reply['error']}")
        return reply

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def broadcast(server: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The ``broadcast`` command: the guide's ``broadcast_presence`` for each event, at the given rate."""
    key = request["server"]

    async def send(event: Sequence[Any]) -> None:
        uid, status, username, color = event
        await server.broadcast_presence(key, uid, status, username=username, role_color=color)

    return {"times": await inject(send, request["events"], request.get("rate"))}
