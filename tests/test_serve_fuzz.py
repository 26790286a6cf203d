"""Property-based fuzzing of client frames (rule 14): whatever a client sends, it gets exactly one answer
(error or server-join) or, beyond the size limit, a 1009 close; the server and other viewers carry on."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from serve import WebSocketServer
from tests.test_serve_support import add_server, add_users
from tests.test_serve_support import settings as serve_settings

A = "100000000000000001"
MAX_FRAME = 2048


class ThreadedServer:
    """A server on its own event loop in a thread, so a synchronous hypothesis test can talk to it."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = WebSocketServer(
            port=0, host="127.0.0.1", settings=serve_settings(database_url, max_frame_bytes=MAX_FRAME)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.open(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @contextlib.contextmanager
    def client(self) -> Iterator[ClientConnection]:
        with connect(f"ws://127.0.0.1:{self.server.port}/", open_timeout=5) as ws:
            first = orjson.loads(ws.recv(timeout=5))
            assert first["type"] == "server-list"
            yield ws


@pytest.fixture
def threaded(database_url: str) -> Iterator[ThreadedServer]:
    async def seed() -> None:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            await add_server(conn, A, "Alpha", alias="alpha", is_default=True)
            await add_users(conn, A, {"200000000000000001": ("alice", "online", "#ff0000")})
        finally:
            await conn.close()

    asyncio.run(seed())
    with ThreadedServer(database_url) as server:
        yield server


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
connect_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["connect", "Connect", "get_user_data", ""]) | json_values},
    optional={
        "data": st.fixed_dictionaries(
            {},
            optional={
                "server": st.sampled_from(["alpha", A, "default", " ", "nope"]) | json_values,
                "discordToken": json_values,
                "discordUser": json_values,
                "password": json_values,
            },
        )
        | json_values
    },
)
frames = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    connect_like.map(lambda v: orjson.dumps(v).decode()),
    connect_like.map(orjson.dumps),  # binary frames holding JSON
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=8))
def test_any_client_frames_get_one_answer_each(threaded: ThreadedServer, batch: list[Any]) -> None:
    with threaded.client() as ws:
        for frame in batch:
            ws.send(frame)
            answer = orjson.loads(ws.recv(timeout=5))
            assert answer["type"] in ("error", "server-join"), answer
            if answer["type"] == "error":
                assert isinstance(answer["data"]["message"], str) and answer["data"]["message"]
            else:
                assert answer["data"]["request"]["server"] == "alpha"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=MAX_FRAME + 1, max_value=MAX_FRAME * 8), binary=st.booleans())
def test_oversize_frames_close_1009_and_others_carry_on(
    threaded: ThreadedServer, size: int, binary: bool
) -> None:
    with threaded.client() as bystander, threaded.client() as ws:
        ws.send(b"x" * size if binary else "x" * size)
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=5)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009
        bystander.send('{"type": "connect", "data": {"server": null}}')
        assert orjson.loads(bystander.recv(timeout=5))["type"] == "server-join"
