"""What viewers see, in memory: the server directory (server-list + "default" resolution), members, and
the pure rule of visibility; serve/view.py decides which visible members a server's viewers are shown.

Pure data and pure functions: no I/O here, so every rule about visibility and diffs is unit-testable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from serve import frames

STATUS_RANK = {"online": 0, "idle": 1, "dnd": 2, "offline": 3}
_touch_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One joinable server. ``key`` is the guild snowflake (or a provider's dict key); ``id`` what clients send."""

    key: str
    id: str
    name: str
    passworded: bool = False
    is_default: bool = False
    hide_offline: bool = False
    relay_messages: bool = True
    oauth_client_id: str | None = None
    created_at: float | None = None  # epoch seconds (database servers): the server-list's order

    def list_entry(self) -> dict[str, Any]:
        """The server-list entry: only what the client needs, never a secret (rule 18)."""
        return {"id": self.id, "name": self.name, "passworded": self.passworded, "default": self.is_default}


class Directory:
    """The current server-list, encoded once, and the resolution of a requested server (rules 5, 6)."""

    def __init__(self, servers: Iterable[ServerInfo]) -> None:
        self.servers: list[ServerInfo] = list(servers)
        self.by_key: dict[str, ServerInfo] = {s.key: s for s in self.servers}
        self._by_id: dict[str, ServerInfo] = {s.id: s for s in self.servers}
        marked = [s for s in self.servers if s.is_default]
        self.default: ServerInfo | None = marked[0] if marked else (self.servers[0] if self.servers else None)
        self.list_frame: bytes = frames.encode({"type": "server-list", "data": list_data(self.servers)})
        self.list_wire: bytes = frames.text_frame(self.list_frame)  # as written to every socket that opens

    def with_server(self, key: str, info: ServerInfo | None) -> Directory:
        """This directory with server ``key`` replaced by ``info`` (None: removed), in the database's order."""
        servers = [s for s in self.servers if s.key != key]
        if info is not None:
            servers.append(info)
        return Directory(sorted(servers, key=database_order))

    def resolve(self, requested: str | None) -> ServerInfo | None:
        """None means the default; else the entry whose id matches, else the one whose snowflake does."""
        if requested is None:
            return self.default
        return self._by_id.get(requested) or self.by_key.get(requested)


def list_data(servers: Iterable[ServerInfo]) -> dict[str, dict[str, Any]]:
    """The server-list's data, keyed by what the client's links hold (docs/protocol.md rule 22): the client
    looks its start-up server (``?s=``) up by key to hold a passworded join for login, then sends the token
    only to an entry whose ``id`` is what it asks for. So each entry is keyed by its ``id`` (the alias when
    set), and a passworded aliased server is also listed under its snowflake, with that as ``id``, so an old
    snowflake link is held for login too."""
    data: dict[str, dict[str, Any]] = {}
    for info in servers:
        data[info.id] = info.list_entry()
        if info.passworded and info.id != info.key:
            data[info.key] = {**info.list_entry(), "id": info.key}
    return data


def database_order(info: ServerInfo) -> tuple[bool, bool, float, str]:
    """serve/queries.py SERVERS' ORDER BY (is_default DESC, created_at NULLS LAST, server_id), in Python."""
    return (not info.is_default, info.created_at is None, info.created_at or 0.0, info.key)


@dataclass(slots=True)
class Member:
    """A member as the client draws it; ``touched`` orders members by recency for the snapshot cap."""

    username: str
    status: str
    role_color: str
    touched: int = field(default_factory=lambda: next(_touch_counter))

    def same_look(self, other: Member) -> bool:
        return (self.username, self.status, self.role_color) == (
            other.username,
            other.status,
            other.role_color,
        )


@dataclass(frozen=True, slots=True)
class Roster:
    """A server's members as read: those viewers may see, and the ids of those the visibility rules
    leave out (members still, so they keep access to a passworded server; never shown)."""

    shown: dict[str, Member]
    hidden: frozenset[str] = frozenset()


def visible(member: Member, hide_offline: bool) -> bool:
    return not (hide_offline and member.status == "offline")


def user_entry(uid: str, member: Member) -> dict[str, str]:
    return {"uid": uid, "username": member.username, "status": member.status, "roleColor": member.role_color}
