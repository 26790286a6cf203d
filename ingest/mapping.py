"""Discord state -> discord_users / discord_servers values, as the d-back guide maps it.

Plain functions over plain data (testable without a gateway); ingest.members applies them to payloads.
``username`` is the member's display name; ``role_color`` the colour of the highest role that has one,
as lowercase ``#rrggbb``, else ``#99aab5``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from shared.discord_rules import DEFAULT_ROLE_COLOR

USERNAME_MAX_CHARS = 100  # discord_users.username is VARCHAR(100)
SERVER_NAME_MAX_CHARS = 100  # discord_servers.name is VARCHAR(100)
ROLE_NAME_MAX_CHARS = 100  # discord_roles.name is VARCHAR(100)
# Discord's "invisible" is what the member sets; everyone else (and we) see "offline".
_STATUS_BY_RAW: dict[str | None, str] = {
    "online": "online",
    "idle": "idle",
    "dnd": "dnd",
    "do_not_disturb": "dnd",
    "offline": "offline",
    "invisible": "offline",
}


class MemberRow(NamedTuple):
    """One discord_users row as the ingest writes it (the order matches the writer's SQL)."""

    server_id: str
    user_id: str
    username: str
    status: str
    role_color: str
    role_ids: str = ""  # the member's role ids, comma-separated (the visibility rules need them)


class RoleRow(NamedTuple):
    """One discord_roles row: visibility rules may name a role instead of giving its id."""

    role_id: str
    name: str


class RoleView(NamedTuple):
    """What the colour rule needs from a role: its place in the hierarchy and its colour."""

    position: int
    role_id: int
    color: int


def status_name(raw_status: str | None) -> str:
    """Discord's status string -> the four statuses the schema knows; unknown or none reads as offline."""
    return _STATUS_BY_RAW.get(raw_status, "offline")


def color_hex(value: int) -> str:
    """A 24-bit colour as lowercase ``#rrggbb``; 0 (Discord's "no colour") gives the default grey."""
    if value <= 0:
        return DEFAULT_ROLE_COLOR
    return f"#{value & 0xFFFFFF:06x}"


def role_sort_key(role: RoleView) -> tuple[int, int]:
    """Discord's hierarchy order, lowest first: by position; on a tie the older (smaller) id is higher."""
    return (role.position, -role.role_id)


def highest_role_color(roles: Iterable[RoleView]) -> str:
    """Colour of the highest role that has a colour (non-zero), else the default grey."""
    best: RoleView | None = None
    for role in roles:
        if role.color and (best is None or role_sort_key(role) > role_sort_key(best)):
            best = role
    return DEFAULT_ROLE_COLOR if best is None else color_hex(best.color)


def clean_text(text: str, max_chars: int) -> str:
    """Text PostgreSQL accepts (no NUL characters), cut to ``max_chars`` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text[:max_chars]


def server_name(name: str | None, server_id: int | str) -> str:
    """A name discord_servers accepts (not blank, <= 100 chars); falls back to the id."""
    cleaned = clean_text(name or "", SERVER_NAME_MAX_CHARS)
    return cleaned if cleaned.strip() else str(server_id)
