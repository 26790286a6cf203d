"""The change feed: what the database announces on LISTEN channel ``dzone_feed``, as typed events.

Triggers (and the two notify functions) in migrations/versions/ build the payloads (0003_server_feed.py
the ``server`` one); this module is their one decoder, and holds the SQL that writers use to take part
in the feed.
docs/change-feed.md is the contract for anyone else listening.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from shared.errors import DzoneError

CHANNEL = "dzone_feed"
# The application_name of each serve's LISTEN connection: PostgreSQL does not show who listens, so
# this is how operators (and ``dzone status``) find them in pg_stat_activity.
LISTENER_APPLICATION_NAME = "dzone-serve-listener"

# Writers: run BULK_MODE first in a transaction to skip per-row notifications, then
# NOTIFY_RESYNC once per server touched. NOTIFY_MESSAGE announces a chat message (never stored).
BULK_MODE = "SET LOCAL dzone.bulk = 'on'"
NOTIFY_RESYNC = "SELECT dzone_notify_resync($1)"
NOTIFY_MESSAGE = "SELECT dzone_notify_message($1, $2, $3, $4, $5)"
MESSAGE_MAX_CHARS = 1000  # the cap dzone_notify_message applies; keeps payloads under 8,000 bytes

Status = Literal["online", "idle", "dnd", "offline"]
STATUSES: frozenset[str] = frozenset(("online", "idle", "dnd", "offline"))


class FeedDecodeError(DzoneError, ValueError):
    """A payload on the feed channel is not one this version understands."""


@dataclass(frozen=True, slots=True)
class UserUpserted:
    """A discord_users row was inserted or changed; carries the whole new row."""

    seq: int
    server_id: str
    user_id: str
    username: str
    status: Status
    role_color: str


@dataclass(frozen=True, slots=True)
class UserDeleted:
    """A discord_users row was deleted (the member left, or an operator removed it), or, with ``hidden``,
    the visibility rules leave the member out: still in the guild, never shown."""

    seq: int
    server_id: str
    user_id: str
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class ServerRow:
    """The discord_servers columns a listener needs: who may view the server, and its server-list entry."""

    name: str
    alias: str | None
    passworded: bool
    is_default: bool
    enabled: bool
    departed: bool
    hide_offline: bool
    relay_messages: bool
    oauth_client_id: str | None
    created_at: float | None  # epoch seconds: the server-list's order

    @property
    def joinable(self) -> bool:
        return self.enabled and not self.departed


@dataclass(frozen=True, slots=True)
class ServerChanged:
    """A discord_servers row was inserted or changed (``row`` is the new row) or deleted (``row`` None)."""

    seq: int
    server_id: str
    row: ServerRow | None

    @property
    def deleted(self) -> bool:
        return self.row is None


@dataclass(frozen=True, slots=True)
class ServerResync:
    """Many rows of one server changed in bulk without per-row events; re-read the whole server."""

    seq: int
    server_id: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A chat message posted in a relayed server; text already capped and on one line."""

    seq: int
    server_id: str
    user_id: str
    channel_id: str
    message_id: str
    text: str


FeedEvent = UserUpserted | UserDeleted | ServerChanged | ServerResync | ChatMessage


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def _flag(data: dict[str, object], name: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false")
    return value


def _server_row(data: dict[str, object]) -> ServerRow:
    created = data["created_at"]
    if created is not None and not isinstance(created, int | float):
        raise TypeError("created_at must be a number or null")
    return ServerRow(
        name=str(data["name"]),
        alias=_optional_text(data["alias"]),
        passworded=_flag(data, "passworded"),
        is_default=_flag(data, "is_default"),
        enabled=_flag(data, "enabled"),
        departed=_flag(data, "departed"),
        hide_offline=_flag(data, "hide_offline"),
        relay_messages=_flag(data, "relay_messages"),
        oauth_client_id=_optional_text(data["oauth_client_id"]),
        created_at=None if created is None else float(created),
    )


def decode(payload: str | bytes) -> FeedEvent:
    """Parse one notification payload; raise FeedDecodeError naming what is wrong."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FeedDecodeError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FeedDecodeError("payload is not a JSON object")
    try:
        kind = data["kind"]
        seq = int(data["seq"])
        server_id = str(data["server_id"])
        if kind == "user":
            if data["op"] == "delete":
                hidden = data.get("hidden", False)  # absent before migration 0005
                if not isinstance(hidden, bool):
                    raise TypeError("hidden must be true or false")
                return UserDeleted(seq, server_id, str(data["user_id"]), hidden)
            if data["op"] == "upsert":
                status = data["status"]
                if status not in STATUSES:
                    raise FeedDecodeError(f"unknown status {status!r}")
                return UserUpserted(
                    seq,
                    server_id,
                    str(data["user_id"]),
                    str(data["username"]),
                    status,
                    str(data["role_color"]),
                )
        elif kind == "server":
            if data["op"] == "delete":
                return ServerChanged(seq, server_id, None)
            if data["op"] == "upsert":
                return ServerChanged(seq, server_id, _server_row(data))
        elif kind == "resync":
            return ServerResync(seq, server_id)
        elif kind == "message":
            return ChatMessage(
                seq,
                server_id,
                str(data["user_id"]),
                str(data["channel_id"]),
                str(data["message_id"]),
                str(data["text"]),
            )
    except KeyError as exc:
        raise FeedDecodeError(f"{data.get('kind')!r} payload lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise FeedDecodeError(f"malformed {data.get('kind')!r} payload: {exc}") from None
    raise FeedDecodeError(f"unknown payload kind/op {data.get('kind')!r}/{data.get('op')!r}")
