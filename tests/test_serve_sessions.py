"""Sessions (serve/sessions.py) on the in-memory source, without sockets: a join writes the server's
prepared frame bytes, and the write budget of an address counts what its sockets hold unsent.

The budget's end-to-end guarantees (non-reading sockets cost little, a newer join replaces a waiting one,
a waiting join is decided again) are tests/test_serve_limits.py's, against a real serve.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Close, CloseCode

from serve.hub import Callbacks, Hub
from serve.metrics import ServeMetrics
from serve.oauth import DiscordIdentity
from serve.sessions import Session
from serve.sources import Memory
from serve.world import Member, ServerInfo
from shared.settings import ServeSettings
from tests.test_serve_fanout import FakeConnection, RecordingTransport, parse_frames
from tests.waiting import wait_for

KEY = "100000000000000001"
MEMBERS = 300  # about 30 KB of snapshot: two of them fit a 64 KiB address budget, one beside 50 KB does not
CONNECT = orjson.dumps({"type": "connect", "data": {"server": "club"}})


class Viewer(FakeConnection):
    """A fake socket from ``address`` whose incoming messages the test feeds (None ends it)."""

    def __init__(self, address: str) -> None:
        super().__init__(RecordingTransport())
        self.remote_address = (address, 40000)
        self.request = self.response = None  # the handshake's, which sessions empty once open
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def recv(self) -> bytes:
        message = await self.incoming.get()
        if message is None:
            raise ConnectionClosedOK(Close(CloseCode.NORMAL_CLOSURE, ""), None)
        return message

    async def send(self, message: bytes, text: bool = False) -> None:
        self.protocol.send_text(message)
        self.send_data()

    def received(self) -> list[dict[str, Any]]:
        return [orjson.loads(p) for w in self.transport.writes for p in parse_frames(w)]


def memory_hub() -> Hub:
    members = {
        f"2{i:017d}": Member(f"member-{i:05d}-with-a-name", "online", "#aabbcc") for i in range(MEMBERS)
    }
    source = Memory([ServerInfo(key=KEY, id="club", name="Club", is_default=True)], {KEY: members})
    settings = ServeSettings(database_url=None, address_buffer_max_bytes=64 * 1024)
    return Hub(
        settings, ServeMetrics(), Callbacks(), cast(DiscordIdentity, None), None, sources=(source, source)
    )


async def open_viewer(hub: Hub, address: str) -> tuple[Viewer, asyncio.Task[None]]:
    viewer = Viewer(address)
    task = asyncio.create_task(hub.sessions.handle(cast(ServerConnection, viewer)))
    await wait_for(lambda: viewer.transport.writes, message="server-list written")
    return viewer, task


def session_of(hub: Hub, viewer: Viewer) -> Session:
    return hub.sessions.by_socket[cast(ServerConnection, viewer)]


async def test_every_joiner_gets_the_same_prepared_frame_bytes_and_is_subscribed():
    hub = memory_hub()
    await hub.refresh_directory()
    first, t1 = await open_viewer(hub, "10.0.0.1")
    second, t2 = await open_viewer(hub, "10.0.0.2")
    for viewer in (first, second):
        viewer.incoming.put_nowait(CONNECT)
    await wait_for(lambda: len(first.transport.writes) == len(second.transport.writes) == 2, message="joined")
    state = hub.states[KEY]
    assert (
        first.transport.writes[1] is second.transport.writes[1] is state.join_wire(hub.info(KEY), None)  # type: ignore[arg-type]
    )
    assert len(first.received()[1]["data"]["users"]) == MEMBERS
    assert state.viewers == {first, second} and session_of(hub, first).state is state
    for viewer in (first, second):
        viewer.incoming.put_nowait(None)
    await asyncio.gather(t1, t2)
    assert not state.viewers and len(hub.sessions) == 0 and not hub.sessions.by_address
    await hub.close()


async def test_bytes_a_neighbour_holds_unsent_delay_a_join_until_it_drains():
    """The address's budget counts what its sockets' writes left unsent; another address is not held up,
    and the neighbour draining lets the waiting join go at once (not on the retry timer)."""
    hub = memory_hub()
    await hub.refresh_directory()
    holder, t1 = await open_viewer(hub, "10.0.0.1")
    joiner, t2 = await open_viewer(hub, "10.0.0.1")
    elsewhere, t3 = await open_viewer(hub, "10.0.0.9")
    holder.transport.unsent = 50_000
    hub.sessions.holding(cast(ServerConnection, holder))  # what the connection reports after a write
    assert hub.sessions.unsent_of("10.0.0.1") == 50_000
    joiner.incoming.put_nowait(CONNECT)
    elsewhere.incoming.put_nowait(CONNECT)
    await wait_for(lambda: len(elsewhere.transport.writes) == 2, message="the other address joined")
    await wait_for(lambda: session_of(hub, joiner) in hub.sessions.deferred, message="join waits")
    assert len(joiner.transport.writes) == 1 and hub.metrics.joins_deferred._value.get() == 1
    holder.transport.unsent = 0
    hub.sessions.writing_resumed(cast(ServerConnection, holder))  # synchronous: the join is written now
    assert [f["type"] for f in joiner.received()] == ["server-list", "server-join"]
    assert not hub.sessions.deferred
    assert hub.sessions.unsent_of("10.0.0.1") == 0 and "10.0.0.1" not in hub.sessions.holders  # forgotten
    for viewer in (holder, joiner, elsewhere):
        viewer.incoming.put_nowait(None)
    await asyncio.gather(t1, t2, t3)
    await hub.close()
