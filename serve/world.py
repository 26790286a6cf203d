"""What viewers see, in memory: the server directory (server-list + "default" resolution), members, and
the pure rules of visibility, diffs and the snapshot that serve/core.py's per-server state applies.

Pure data and pure functions: no I/O here, so every rule about visibility and diffs is unit-testable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
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
        self.list_frame: bytes = frames.encode(
            {"type": "server-list", "data": {s.key: s.list_entry() for s in self.servers}}
        )
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


def presence_for_change(
    key: str, uid: str, before: Member | None, after: Member | None, hide_offline: bool
) -> bytes | None:
    """The presence a viewer needs when one member goes from ``before`` to ``after`` (None = absent).

    Deleted or newly hidden (offline on a hide-offline server) -> ``delete: true``; visible -> a full
    presence; hidden before and after (or no change) -> nothing.
    """
    was = before is not None and visible(before, hide_offline)
    now = after is not None and visible(after, hide_offline)
    if now:
        assert after is not None
        if was and before is not None and before.same_look(after):
            return None
        return frames.presence_frame(key, uid, after.status, after.username, after.role_color)
    if before is not None and (was or after is None):
        # Gone: a delete for a member the client may draw (sent also for a hidden one that left: harmless,
        # and the client may have it from an older snapshot).
        status = "offline" if after is not None else before.status
        return frames.presence_frame(key, uid, status, before.username, before.role_color, delete=True)
    return None


def diff_presences(
    key: str, old: dict[str, Member], new: dict[str, Member], old_hide: bool, new_hide: bool
) -> Iterator[bytes]:
    """Presences that take a viewer from the ``old`` world to the ``new`` one (after a resync or setting change)."""
    for uid, after in new.items():
        before = old.get(uid)
        was = before is not None and visible(before, old_hide)
        now = visible(after, new_hide)
        if now and not (was and before is not None and before.same_look(after)):
            yield frames.presence_frame(key, uid, after.status, after.username, after.role_color)
        elif was and not now:
            yield frames.presence_frame(key, uid, after.status, after.username, after.role_color, delete=True)
    for uid, before in old.items():
        if uid not in new and visible(before, old_hide):
            yield frames.presence_frame(
                key, uid, before.status, before.username, before.role_color, delete=True
            )


def snapshot_users(
    members: dict[str, Member], hide_offline: bool, max_users: int
) -> dict[str, dict[str, str]]:
    """The visible members, capped at ``max_users``: online first, then idle, dnd, offline, most recent first."""
    shown = [(uid, m) for uid, m in members.items() if visible(m, hide_offline)]
    if len(shown) > max_users:
        shown.sort(key=lambda item: (STATUS_RANK.get(item[1].status, 0), -item[1].touched))
        shown = shown[:max_users]
    return {uid: user_entry(uid, m) for uid, m in shown}


def encode_join(info: ServerInfo, members: dict[str, Member], client_id: str | None, max_users: int) -> bytes:
    data: dict[str, Any] = {
        "users": snapshot_users(members, info.hide_offline, max_users),
        "request": {"server": info.id},
        "serverName": info.name,
    }
    if client_id:
        data["clientId"] = client_id
    return frames.encode({"type": "server-join", "data": data})
