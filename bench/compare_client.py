"""The benchmark's viewers: many lean WebSocket clients in one process, driven by the harness over a Pipe.

A viewer does what the d-zone page does (opens the socket offering permessage-deflate like a
browser, waits for ``server-list``, sends ``connect``, waits for ``server-join``) but speaks the
protocol itself on an asyncio Protocol: a full client library would cost more CPU per received frame
than the servers under test spend sending it, and the harness would measure itself. Pings are
answered, so idle viewers stay connected as long as needed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import zlib
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import orjson


class ViewerError(Exception):
    """A viewer saw something a d-back-compatible server must not send (or the handshake failed)."""


def _masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN set, masked as RFC 6455 requires of clients)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    pad = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big") if n else b""
    return header + key + body


class Viewer(asyncio.Protocol):
    """One d-zone viewer. ``joined`` resolves with the arrival time of its ``server-join``."""

    def __init__(self, host: str, port: int, server: str | None) -> None:
        self.host, self.port, self.server = host, port, server
        self.joined: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False
        self._inflater: Any = None
        self._reset_inflater = False
        self.lost = False
        # Recording state, set by the worker around a fan-out run.
        self.arrivals: dict[str, list[float]] | None = None
        self.presences = 0
        self.expected = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                f"Origin: http://{self.host}:{self.port}\r\nUser-Agent: dzone-bench\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ViewerError(f"connection lost: {exc!r}"))

    def _fail(self, exc: Exception) -> None:
        if not self.joined.done():
            self.joined.set_exception(exc)
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._buffer += data
        if not self._open and not self._handshake():
            return
        try:
            self._frames(now)
        except ViewerError as exc:
            self._fail(exc)
            assert self.transport is not None
            self.transport.close()

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        if " 101 " not in head[0] + " ":
            self._fail(ViewerError(f"handshake refused: {head[0]}"))
            return False
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        extension = headers.get("sec-websocket-extensions", "")
        if extension.startswith("permessage-deflate"):
            self._inflater = zlib.decompressobj(-15)
            self._reset_inflater = "server_no_context_takeover" in extension
        self._open = True
        return True

    def _frames(self, now: float) -> None:
        buf = self._buffer
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            pos += header + length
            opcode = b0 & 0x0F
            if not b0 & 0x80 or opcode == 0:
                raise ViewerError("fragmented frame: the servers under test never fragment small frames")
            if opcode in (1, 2):
                if b0 & 0x40:
                    payload = self._inflate(payload)
                self._message(payload, now)
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(_masked(0xA, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise ViewerError(f"server closed the socket (code {code})")
        del buf[:pos]

    def _inflate(self, payload: bytes) -> bytes:
        if self._inflater is None:
            raise ViewerError("compressed frame without a negotiated permessage-deflate")
        if self._reset_inflater:
            self._inflater = zlib.decompressobj(-15)
        data: bytes = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
        return data

    def _message(self, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "presence":
            if self.arrivals is not None:
                self.arrivals.setdefault(message["data"]["uid"], []).append(now)
                self.presences += 1
                if self.presences >= self.expected and self.done is not None and not self.done.done():
                    self.done.set_result(None)
        elif kind == "server-list":
            frame = {"type": "connect", "data": {"server": self.server}}
            assert self.transport is not None
            self.transport.write(_masked(0x1, orjson.dumps(frame)))
        elif kind == "server-join":
            if not self.joined.done():
                self.joined.set_result(now)
        elif kind == "error":
            self._fail(ViewerError(f"server answered error: {message.get('data')}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


class Worker:
    """The viewers of one process and the commands the harness sends them."""

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []

    async def join(
        self, host: str, port: int, server: str | None, count: int, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """Open ``count`` viewers (at most ``concurrency`` handshakes in flight); start and join time of each."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        times: list[tuple[float, float]] = []

        async def one() -> None:
            async with gate:
                started = time.monotonic()
                _, viewer = await loop.create_connection(lambda: Viewer(host, port, server), host, port)
                self.viewers.append(viewer)
                joined = await asyncio.wait_for(viewer.joined, timeout)
                times.append((started, joined))

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        return {"times": times, "errors": errors[:5], "failed": len(errors)}

    def arm(self, expected: int) -> None:
        """Start recording presence arrivals; each viewer is done after ``expected`` of them."""
        loop = asyncio.get_running_loop()
        for viewer in self.viewers:
            viewer.arrivals, viewer.presences, viewer.expected = {}, 0, expected
            viewer.done = loop.create_future()

    async def collect(self, injected: dict[str, list[float]], timeout: float) -> dict[str, Any]:
        """Wait for every viewer's expected presences; latencies matched by uid and order, and counts."""
        waits = [v.done for v in self.viewers if v.done is not None]
        _, pending = await asyncio.wait(waits, timeout=timeout) if waits else (set(), set())
        latencies = array("d")
        received, last, first = 0, 0.0, float("inf")
        for viewer in self.viewers:
            for uid, arrivals in (viewer.arrivals or {}).items():
                sent = injected.get(uid, [])
                latencies.extend(arrival - sent[i] for i, arrival in enumerate(arrivals) if i < len(sent))
                received += len(arrivals)
                last = max(last, arrivals[-1])
                first = min(first, arrivals[0])
            viewer.arrivals, viewer.done = None, None
        return {
            "received": received,
            "incomplete": len(pending),
            "first": first,
            "last": last,
            "latencies": latencies.tobytes(),
        }

    def close(self) -> int:
        lost = sum(1 for v in self.viewers if v.lost)
        for viewer in self.viewers:
            viewer.close()
        self.viewers = []
        return lost


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker()
    while True:
        command: Sequence[Any] = await loop.run_in_executor(None, conn.recv)
        op, args = command[0], command[1:]
        if op == "join":
            conn.send(await worker.join(*args))
        elif op == "arm":
            worker.arm(*args)
            conn.send(None)
        elif op == "collect":
            conn.send(await worker.collect(*args))
        elif op == "count":
            conn.send(sum(1 for v in worker.viewers if not v.lost))
        elif op == "close":
            conn.send(worker.close())
        elif op == "exit":
            worker.close()
            conn.send(None)
            return
        else:
            raise ValueError(f"unknown worker command {op!r}")


def worker_main(conn: Connection) -> None:
    """Entry point of a viewer process."""
    asyncio.run(_serve(conn))
