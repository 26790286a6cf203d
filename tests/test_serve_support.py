"""Support for the serve tests (no tests here): an in-process server on a free port, a viewer client that
keeps a model of the world it was sent, and seeding helpers. Everything is real: PostgreSQL, sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from websockets.asyncio.client import ClientConnection, connect

from serve import WebSocketServer
from shared.settings import ServeSettings

FAST = {
    "listener_probe_interval_s": 0.3,
    "listener_probe_timeout_s": 2.0,
    "listener_backoff_max_s": 0.3,
    "connects_per_minute": 10_000,
    "oauth_calls_per_ip_per_s": 1_000.0,  # tests of the caps set their own
}


def settings(database_url: str | None, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {"database_url": database_url, "host": "127.0.0.1", "port": 0, **FAST}
    values.update(overrides)
    return ServeSettings(**values)


@contextlib.asynccontextmanager
async def running(
    database_url: str | None, *, server: WebSocketServer | None = None, **overrides: Any
) -> AsyncIterator[WebSocketServer]:
    """An opened server (port 0), closed on exit."""
    if server is None:
        server = WebSocketServer(port=0, host="127.0.0.1", settings=settings(database_url, **overrides))
    await server.open()
    try:
        yield server
    finally:
        await server.close()


class Viewer:
    """A WebSocket client that records frames and keeps the world it was told about (uid -> user)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.world: dict[str, dict[str, Any]] = {}
        self.server: str | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, server: WebSocketServer, path: str = "/", **kwargs: Any) -> AsyncIterator[Viewer]:
        async with connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=5, **kwargs) as ws:
            yield cls(ws)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):  # unlike wait_for in 3.11, never swallows a cancel
            raw = await self.ws.recv()
        assert isinstance(raw, str), "server frames must be text"
        frame: dict[str, Any] = orjson.loads(raw)
        self._apply(frame)
        return frame

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, which must be of type ``kind``."""
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def send(self, frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def connect(self, server: str | None = None, **data: Any) -> dict[str, Any]:
        """Send connect and return the answer (server-join or error)."""
        payload: dict[str, Any] = dict(data)
        payload["server"] = server
        await self.send({"type": "connect", "data": payload})
        return await self.recv()

    async def join(self, server: str | None = None, **data: Any) -> dict[str, Any]:
        answer = await self.connect(server, **data)
        assert answer["type"] == "server-join", answer
        return answer

    async def until(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Read frames until one satisfies ``predicate``; return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("no matching frame in time")
            frame = await self.recv(remaining)
            if predicate(frame):
                return frame

    def _apply(self, frame: dict[str, Any]) -> None:
        kind, data = frame.get("type"), frame.get("data", {})
        if kind == "server-join":
            self.world = {u["uid"]: dict(u) for u in data["users"].values()}
            self.server = data["request"]["server"]
        elif kind == "presence":
            if data.get("delete"):
                self.world.pop(data["uid"], None)
            else:
                self.world[data["uid"]] = {k: data[k] for k in ("uid", "username", "status", "roleColor")}


async def add_server(
    conn: asyncpg.Connection, server_id: str, name: str | None = None, **columns: Any
) -> None:
    cols = {"server_id": server_id, "name": name or f"Server {server_id}", **columns}
    names = ", ".join(cols)
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.execute(f"INSERT INTO discord_servers ({names}) VALUES ({marks})", *cols.values())


async def add_users(conn: asyncpg.Connection, server_id: str, users: dict[str, tuple[str, str, str]]) -> None:
    """users: uid -> (username, status, role_color)."""
    await conn.executemany(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color) VALUES ($1, $2, $3, $4, $5)",
        [(uid, server_id, *row) for uid, row in users.items()],
    )


async def db_world(conn: asyncpg.Connection, server_id: str, hide_offline: bool) -> dict[str, dict[str, Any]]:
    """What a viewer should hold for ``server_id`` according to the database (never a hidden member)."""
    rows = await conn.fetch(
        "SELECT user_id, username, status, role_color FROM discord_users WHERE server_id = $1 AND NOT hidden",
        server_id,
    )
    return {
        r["user_id"]: {
            "uid": r["user_id"],
            "username": r["username"],
            "status": r["status"],
            "roleColor": r["role_color"],
        }
        for r in rows
        if not (hide_offline and r["status"] == "offline")
    }
