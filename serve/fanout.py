"""Coalesced fan-out: a server's event frames that become ready in one loop iteration are written to each
viewer once, as one concatenation of WebSocket frames built once for all viewers (uWebSockets' "corking").

``broadcast()`` frames and writes every message to every connection separately (one framing step and one
``send`` system call per viewer per message); a burst of N notifications to V viewers costs N x V of both.
Here it costs N framings and V writes. Only data frames take this path: pings, pongs, closes and the
snapshot still go through websockets, which also writes whole frames with ``transport.write``, so the two
interleave at frame boundaries only. Compression is off (``serve(compression=None)``); a connection that
negotiated an extension anyway is sent frame by frame through websockets, because shared bytes would be wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from serve.frames import text_frame
from serve.metrics import ServeMetrics


class Audience(Protocol):
    """What the fan-out needs of a server: the sockets that view it now."""

    viewers: set[ServerConnection]


class Fanout:
    """Queues each server's frames for the current loop iteration and writes them at its end (one
    ``call_soon`` per iteration), or at once per frame with ``coalesce = False`` (``broadcast()``).

    A caller that is about to change who views a server (a join, a switch, a cut) first calls
    :meth:`flush_server`, so the frames queued before the change reach exactly the viewers of that moment:
    order per server is kept, nothing of the old server follows a switch, nothing is lost on a join.
    """

    def __init__(self, metrics: ServeMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.metrics = metrics
        self.coalesce = True
        self._clock = clock
        self._pending: dict[Audience, list[bytes]] = {}
        self._queued_at: dict[Audience, list[float]] = {}
        self._scheduled = False

    def send(self, audience: Audience, payload: bytes) -> None:
        """Send one event frame (UTF-8 JSON) to the audience's viewers, in order with its other frames."""
        if not audience.viewers:
            return
        if not self.coalesce:
            broadcast(audience.viewers, payload, text=True)
            self.metrics.frames_sent.inc(len(audience.viewers))
            return
        frames = self._pending.get(audience)
        if frames is None:
            frames = self._pending[audience] = []
            self._queued_at[audience] = []
            if not self._scheduled:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
        frames.append(text_frame(payload))
        self._queued_at[audience].append(self._clock())

    def flush_server(self, audience: Audience) -> None:
        """Write this audience's queued frames now, to its viewers of this moment."""
        frames = self._pending.pop(audience, None)
        if frames:
            self._write(audience, frames, self._queued_at.pop(audience))

    def flush(self) -> None:
        """End of the loop iteration: write every queued server's frames (runs once per iteration)."""
        self._scheduled = False
        pending, queued_at = self._pending, self._queued_at
        self._pending, self._queued_at = {}, {}
        self.metrics.flush_servers.observe(len(pending))
        for audience, frames in pending.items():
            self._write(audience, frames, queued_at[audience])

    def _write(self, audience: Audience, frames: list[bytes], queued_at: list[float]) -> None:
        blob = b"".join(frames)
        written = 0
        for ws in tuple(audience.viewers):
            if write_frames(ws, blob, frames):
                written += 1
        now = self._clock()
        for at in queued_at:
            self.metrics.queue_to_write.observe(now - at)
        self.metrics.frames_sent.inc(written * len(frames))
        self.metrics.coalesced_writes.inc(written)
        self.metrics.frames_per_write.observe(len(frames))


def write_frames(ws: ServerConnection, blob: bytes, frames: Iterable[bytes]) -> bool:
    """Write ``blob`` (whole frames) to one open socket; False when it was skipped (closing, or closed).

    ``send_data()`` afterwards is what ``broadcast()`` does too: it writes whatever websockets queued and
    runs the connection's unsent-data cap (serve/api.py drops a socket above it at once).
    """
    transport = ws.transport
    if ws.protocol.state is not State.OPEN or transport is None or transport.is_closing():
        return False
    if ws.protocol.extensions:  # negotiated compression: the shared bytes would be wrong for it
        for frame in frames:
            ws.protocol.send_text(_payload(frame))
    else:
        transport.write(blob)
    ws.send_data()
    return True


def _payload(frame: bytes) -> bytes:
    """The payload of one frame built by :func:`text_frame`."""
    n = frame[1]
    return frame[2 + (2 if n == 126 else 8 if n == 127 else 0) :]
