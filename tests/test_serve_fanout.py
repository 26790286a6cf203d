"""Coalesced fan-out (serve/fanout.py): each viewer is written once per loop iteration, and every guarantee
of the per-frame path still holds: order per server, nothing of an old server after a switch, nothing lost
on a join, slow viewers dropped while the others continue, a viewer over budget skipped and never waited for.

The unit tests use the real websockets protocol object behind a recording transport; the others run the
real serve, PostgreSQL and WebSocket clients, with bursts of many rows per transaction (one loop iteration).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from serve.core import Grant
from serve.fanout import Fanout
from serve.frames import text_frame
from serve.metrics import ServeMetrics
from serve.sessions import PendingJoin
from shared.feed import FeedEvent, UserUpserted
from tests.test_serve_support import Viewer, add_server, db_world, running
from tests.waiting import wait_for

A, B = "100000000000000001", "100000000000000002"
MEMBERS = 100


# ---------------------------------------------------------------- units (no sockets)


class RecordingTransport:
    def __init__(self, unsent: int = 0) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.unsent = unsent

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.unsent


class FakeConnection:
    """What the fan-out touches of a ServerConnection, around websockets' real protocol object."""

    def __init__(self, transport: RecordingTransport) -> None:
        self.transport = transport
        self.protocol = ServerProtocol()
        self.protocol.state = State.OPEN
        self.send_in_progress = None  # what broadcast() checks of a real connection

    def send_data(self) -> None:
        for data in self.protocol.data_to_send():
            self.transport.write(data)


class Room:
    def __init__(self, *viewers: FakeConnection) -> None:
        self.viewers: set[Any] = set(viewers)


def parse_frames(data: bytes) -> list[bytes]:
    """Parse server frames with websockets' own parser (a client's view: unmasked frames)."""
    reader = StreamReader()
    reader.feed_data(data)
    payloads = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
            assert frame.opcode is Opcode.TEXT and frame.fin
            payloads.append(bytes(frame.data))
    return payloads


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_would_write(size):
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_one_write_per_viewer_per_tick_with_every_frame_in_order():
    metrics = ServeMetrics()
    fanout = Fanout(metrics)
    viewers = [FakeConnection(RecordingTransport()) for _ in range(3)]
    room = Room(*viewers)
    payloads = [orjson.dumps({"type": "presence", "n": i}) for i in range(100)]
    for payload in payloads:
        fanout.send(room, payload)
    assert all(v.transport.writes == [] for v in viewers), "nothing is written before the tick ends"
    await asyncio.sleep(0)  # one loop iteration: the flush scheduled with call_soon runs
    for v in viewers:
        assert len(v.transport.writes) == 1
        assert parse_frames(v.transport.writes[0]) == payloads
    assert metrics.frames_sent._value.get() == 300
    assert metrics.coalesced_writes._value.get() == 3


async def test_a_viewer_over_budget_is_skipped_not_waited_for():
    """A socket being dropped (closing) or closing its handshake gets nothing; the others get everything in
    the same synchronous flush, including one above its write buffer (its pause is the drop timer's job)."""
    fanout = Fanout(ServeMetrics())
    reader = FakeConnection(RecordingTransport())
    paused = FakeConnection(RecordingTransport(unsent=10 * 1024 * 1024))
    dropped = FakeConnection(RecordingTransport())
    dropped.transport.closing = True
    closing = FakeConnection(RecordingTransport())
    closing.protocol.state = State.CLOSING
    room = Room(reader, paused, dropped, closing)
    fanout.send(room, b'{"n":1}')
    fanout.flush()  # synchronous: returns without waiting for any socket
    assert parse_frames(reader.transport.writes[0]) == [b'{"n":1}']
    assert parse_frames(paused.transport.writes[0]) == [b'{"n":1}']
    assert dropped.transport.writes == [] and closing.transport.writes == []


async def test_flushing_a_server_before_a_switch_keeps_later_frames_from_the_leaver():
    fanout = Fanout(ServeMetrics())
    stay, leave = FakeConnection(RecordingTransport()), FakeConnection(RecordingTransport())
    old = Room(stay, leave)
    fanout.send(old, b'{"n":1}')
    fanout.flush_server(old)  # the hub does this before moving a socket
    old.viewers.discard(leave)
    fanout.send(old, b'{"n":2}')
    await asyncio.sleep(0)
    assert [p for w in leave.transport.writes for p in parse_frames(w)] == [b'{"n":1}']
    assert [p for w in stay.transport.writes for p in parse_frames(w)] == [b'{"n":1}', b'{"n":2}']


async def test_a_connection_with_an_extension_is_sent_frame_by_frame_by_websockets():
    """Shared bytes are only right without compression; a connection that negotiated an extension anyway
    gets each frame through its own protocol object."""

    class Marker:
        name = "x-marker"

        def encode(self, frame: Frame) -> Frame:
            return frame

    fanout = Fanout(ServeMetrics())
    plain, extended = FakeConnection(RecordingTransport()), FakeConnection(RecordingTransport())
    extended.protocol.extensions = [Marker()]  # type: ignore[list-item]
    room = Room(plain, extended)
    for n in range(3):
        fanout.send(room, orjson.dumps({"n": n}))
    fanout.flush()
    assert len(plain.transport.writes) == 1
    assert len(extended.transport.writes) == 3
    got = [p for w in extended.transport.writes for p in parse_frames(w)]
    assert got == [orjson.dumps({"n": n}) for n in range(3)]


async def test_per_frame_switch_uses_broadcast_at_once():
    fanout = Fanout(ServeMetrics())
    fanout.coalesce = False
    viewer = FakeConnection(RecordingTransport())
    fanout.send(Room(viewer), b'{"n":1}')
    assert parse_frames(viewer.transport.writes[0]) == [b'{"n":1}']


# ---------------------------------------------------------------- the real serve


async def seed(conn: asyncpg.Connection) -> None:
    await add_server(conn, A, "Alpha", is_default=True, hide_offline=False)
    await add_server(conn, B, "Bravo", hide_offline=False)
    for server in (A, B):
        await conn.execute(
            "INSERT INTO discord_users (user_id, server_id, username, status, role_color)"
            " SELECT (300000000000000000 + g)::text, $1, 'm' || g, 'online', '#aabbcc'"
            " FROM generate_series(1, $2) g",
            server,
            MEMBERS,
        )


async def rename_all(conn: asyncpg.Connection, server: str, prefix: str) -> None:
    await conn.execute(
        "UPDATE discord_users SET username = $2 || right(user_id, 3) WHERE server_id = $1", server, prefix
    )


def presence_names(frames: list[dict[str, Any]], server: str) -> list[str]:
    return [f["data"]["username"] for f in frames if f["type"] == "presence" and f["server"] == server]


async def read_until(viewer: Viewer, done: Any, timeout: float = 15) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []

    async def read() -> None:
        while not done(frames):
            frames.append(await viewer.recv())

    await asyncio.wait_for(read(), timeout)
    return frames


async def test_switch_in_the_middle_of_a_burst_keeps_order_and_sends_nothing_of_the_old_server(
    database_url, conn
):
    """One transaction renames A's members, then B's, then A's again; the viewer switches A -> B at A's 50th
    notification, in the same loop iteration. It gets A's first 50 in commit order, B's snapshot, B's
    renames, and nothing of A after; a viewer staying on A gets all 200 A renames in order."""
    await seed(conn)
    async with (
        running(database_url) as server,
        Viewer.open(server) as mover,
        Viewer.open(server) as stayer,
        Viewer.open(server) as on_b,
    ):
        for viewer, target in ((mover, A), (stayer, A), (on_b, B)):
            await viewer.expect("server-list")
            await viewer.join(target)
        hub, listener = server._hub, server._listener
        assert hub is not None and listener is not None
        mover_session = next(
            s for s in hub.sessions.by_socket.values() if s.ws.remote_address[1] == _port(mover)
        )
        seen: list[FeedEvent] = []
        switched: list[bool] = []
        deliver = listener._on_event

        def switch_at_fiftieth(event: FeedEvent) -> None:
            deliver(event)
            seen.append(event)
            a_count = sum(isinstance(e, UserUpserted) and e.server_id == A for e in seen)
            if a_count == 50 and not switched:
                info = hub.directory.resolve(B)  # type: ignore[union-attr]
                assert info is not None
                mover_session.pending = PendingJoin(hub.states[B], info, None, Grant())
                hub.sessions.write_join(mover_session)
                switched.append(True)

        listener._on_event = switch_at_fiftieth
        async with conn.transaction():
            await rename_all(conn, A, "a1-")
            await rename_all(conn, B, "b1-")
            await rename_all(conn, A, "a2-")

        got = await read_until(mover, lambda fs: len(presence_names(fs, B)) == MEMBERS)
        stayed = await read_until(stayer, lambda fs: len(presence_names(fs, A)) == 2 * MEMBERS)
        a_order = [e.username for e in seen if isinstance(e, UserUpserted) and e.server_id == A]
        assert presence_names(stayed, A) == a_order
        join_at = next(i for i, f in enumerate(got) if f["type"] == "server-join")
        assert presence_names(got[:join_at], A) == a_order[:50]
        assert presence_names(got[join_at:], A) == []
        assert got[join_at]["data"]["request"]["server"] == B
        assert presence_names(got[join_at:], B) == [f"b1-{i:03d}" for i in range(1, MEMBERS + 1)]
        assert mover.world == await db_world(conn, B, False)


def _port(viewer: Viewer) -> int:
    return int(viewer.ws.local_address[1])


async def test_joins_during_bursts_lose_nothing(database_url, conn):
    """Viewers join (and switch) while transactions of 100 changes each are committed; each converges on
    the database exactly (joins write the snapshot between two of the tick's flushes)."""
    await seed(conn)
    async with running(database_url) as server, contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(Viewer.open(server)) for _ in range(12)]
        for v in opened:
            await v.expect("server-list")
        writer = await asyncpg.connect(database_url)

        async def bursts() -> None:
            for round_ in range(20):
                async with writer.transaction():
                    await rename_all(writer, A, f"r{round_:02d}-")
                    await rename_all(writer, B, f"q{round_:02d}-")

        async def joins(v: Viewer, i: int) -> None:
            for n in range(6):
                await v.send({"type": "connect", "data": {"server": A if (i + n) % 2 else B}})
                await asyncio.sleep(0)  # not synchronisation: lets the bursts interleave with joins

        try:
            await asyncio.gather(bursts(), *(joins(v, i) for i, v in enumerate(opened)))
        finally:
            await writer.close()
        started = time.perf_counter()
        for i, v in enumerate(opened):
            target = B if i % 2 else A  # the server of each viewer's last connect ((i + 5) % 2)
            truth = await db_world(conn, target, False)
            await read_until(
                v, lambda _fs, v=v, truth=truth, target=target: v.server == target and v.world == truth
            )
        print(f"12 viewers converged {time.perf_counter() - started:.3f}s after the last burst")


def open_non_reader(port: int) -> socket.socket:
    """A socket with a tiny receive buffer that upgrades, joins A, and never reads again."""
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
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = orjson.dumps({"type": "connect", "data": {"server": A}})
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body)
    return sock


async def test_a_slow_viewer_is_dropped_while_the_others_get_everything(database_url, conn):
    await seed(conn)
    limits: dict[str, Any] = {
        "write_buffer_bytes": 1024,
        "socket_buffer_max_bytes": 64 * 1024,
        "slow_viewer_grace_s": 0.2,
    }
    async with running(database_url, **limits) as server, Viewer.open(server) as reader:
        await reader.expect("server-list")
        await reader.join(A)
        hub = server._hub
        assert hub is not None
        slow = await asyncio.to_thread(open_non_reader, server.port)
        try:
            await wait_for(lambda: len(tuple(hub.viewers_of(A))) == 2, message="the non-reader joined")
            # A small kernel send buffer on the serve's side too, so the unsent data piles up in the serve
            # (loopback's autotuned buffers would otherwise hold megabytes).
            slow_ws = next(ws for ws in hub.viewers_of(A) if ws.remote_address[1] == slow.getsockname()[1])
            slow_ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            started = time.perf_counter()
            for round_ in range(40):
                async with conn.transaction():
                    await rename_all(conn, A, f"long-name-to-fill-buffers-{round_:02d}-")
            await wait_for(
                lambda: server.metrics.slow_viewers_dropped._value.get() >= 1,
                message="the slow viewer dropped",
            )
            truth = await db_world(conn, A, False)
            frames = await read_until(reader, lambda _fs: reader.world == truth, timeout=30)
            assert len(presence_names(frames, A)) == 40 * MEMBERS  # every change, none skipped
            print(f"reader converged {time.perf_counter() - started:.3f}s after the first burst")
            assert len(tuple(hub.viewers_of(A))) == 1
        finally:
            slow.close()


async def test_an_access_cut_inside_a_burst_ends_the_servers_frames_at_the_cut(database_url, conn):
    """One transaction renames A's members, makes A passworded, renames them again: an anonymous viewer
    gets the first renames in order, then the access error, then nothing of A (the rest was queued in the
    same loop iteration); its socket still joins B."""
    from serve.frames import ERR_ACCESS_LOST

    await seed(conn)
    async with running(database_url) as server, Viewer.open(server) as viewer:
        await viewer.expect("server-list")
        await viewer.join(A)
        async with conn.transaction():
            await rename_all(conn, A, "c1-")
            await conn.execute("UPDATE discord_servers SET passworded = true WHERE server_id = $1", A)
            await rename_all(conn, A, "c2-")
        got = await read_until(viewer, lambda fs: bool(fs) and fs[-1]["type"] == "error")
        assert got[-1]["data"]["message"] == ERR_ACCESS_LOST
        names = presence_names(got, A)  # each member once, all before the cut (order: the first test)
        assert sorted(names) == [f"c1-{i:03d}" for i in range(1, MEMBERS + 1)]
        await conn.execute("UPDATE discord_users SET status = 'idle' WHERE server_id = $1", A)
        after = await viewer.connect(B)
        assert after["type"] == "server-join", after  # the next frame: nothing of A came in between
