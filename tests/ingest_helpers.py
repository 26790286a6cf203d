"""Helpers for the ingest tests: a plain-data guild source and a change-feed recorder."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import asyncpg

from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, RoleRow
from ingest.writer import GuildSnapshot
from shared.feed import CHANNEL, FeedEvent, decode
from simulator.payloads import WorldTruth


class DictSource:
    """A GuildSource over plain dicts: server_id -> (name, {user_id: row})."""

    def __init__(self, owned: Iterable[str] | None = None) -> None:
        self.guilds: dict[str, tuple[str, dict[str, MemberRow]]] = {}
        self.channel_sets: dict[str, list[ChannelRow]] = {}
        self.role_sets: dict[str, list[RoleRow]] = {}
        self.owned = set(owned) if owned is not None else None

    def set_guild(
        self, server_id: str, name: str, rows: Iterable[MemberRow], channels: Iterable[ChannelRow] = ()
    ) -> None:
        self.guilds[server_id] = (name, {row.user_id: row for row in rows})
        self.channel_sets[server_id] = list(channels)

    def channels(self, server_id: str) -> list[ChannelRow] | None:
        return self.channel_sets.get(server_id) if server_id in self.guilds else None

    def roles(self, server_id: str) -> list[RoleRow] | None:
        return self.role_sets.get(server_id, []) if server_id in self.guilds else None

    def snapshot(self, server_id: str) -> GuildSnapshot | None:
        if server_id not in self.guilds:
            return None
        name, rows = self.guilds[server_id]
        return GuildSnapshot(name, list(rows.values()))

    def server_ids(self) -> list[str]:
        return list(self.guilds)

    def owns(self, server_id: str) -> bool:
        return self.owned is None or server_id in self.owned


class FeedRecorder:
    """Collects every decoded change-feed event on a dedicated connection."""

    def __init__(self) -> None:
        self.events: list[FeedEvent] = []
        self.conn: asyncpg.Connection | None = None

    async def start(self, url: str) -> FeedRecorder:
        self.conn = await asyncpg.connect(url, timeout=10)
        await self.conn.add_listener(
            CHANNEL, lambda _c, _p, _ch, payload: self.events.append(decode(payload))
        )
        return self

    async def stop(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    def of(self, kind: type) -> list[FeedEvent]:
        return [event for event in self.events if isinstance(event, kind)]


async def table_rows(conn: asyncpg.Connection, server_id: str) -> dict[str, tuple[str, str, str]]:
    """user_id -> (username, status, role_color) of one server."""
    records = await conn.fetch(
        "SELECT user_id, username, status, role_color FROM discord_users WHERE server_id = $1", server_id
    )
    return {r["user_id"]: (r["username"], r["status"], r["role_color"]) for r in records}


def expected_rows(rows: Iterable[MemberRow]) -> dict[str, tuple[str, str, str]]:
    return {row.user_id: (row.username, row.status, row.role_color) for row in rows}


def make_rows(server_id: str, count: int, status: str = "online", start: int = 1000) -> list[MemberRow]:
    return [
        MemberRow(server_id, str(start + i), f"user {i}", status, "#99aab5" if i % 3 else "#ff0000")
        for i in range(count)
    ]


def truth_rows(state: WorldTruth, include_bots: bool = False) -> dict[str, dict[str, tuple[str, str, str]]]:
    """The simulator's truth in the shape of :func:`db_view`."""
    return {
        guild["id"]: {
            m["user_id"]: (m["display_name"][:100], m["status"], m["role_color"])
            for m in guild["members"]
            if include_bots or not m["bot"]
        }
        for guild in state["guilds"]
    }


async def db_view(conn: asyncpg.Connection) -> dict[str, dict[str, tuple[str, str, str]]]:
    """Every server present (not departed) with its users, as server_id -> user_id -> values."""
    view: dict[str, dict[str, tuple[str, str, str]]] = {
        r["server_id"]: {}
        for r in await conn.fetch("SELECT server_id FROM discord_servers WHERE departed_at IS NULL")
    }
    for r in await conn.fetch("SELECT server_id, user_id, username, status, role_color FROM discord_users"):
        view.setdefault(r["server_id"], {})[r["user_id"]] = (r["username"], r["status"], r["role_color"])
    return view


def differences(truth: dict[str, Any], seen: dict[str, Any], limit: int = 5) -> list[str]:
    out = []
    for sid in sorted(set(truth) | set(seen)):
        t, s = truth.get(sid), seen.get(sid)
        if t is None or s is None:
            out.append(f"server {sid} only in {'truth' if s is None else 'db'}")
            continue
        for uid in sorted(set(t) | set(s)):
            if t.get(uid) != s.get(uid):
                out.append(f"{sid}/{uid}: truth={t.get(uid)} db={s.get(uid)}")
    return out[:limit]


def free_port() -> int:
    """A TCP port free on loopback right now (for a process's own HTTP port in tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
