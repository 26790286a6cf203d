"""Where servers and members come from: PostgreSQL by default, or the guide's async callbacks.

Callback output is validated here: missing fields get the guide's defaults, bad entries are logged and
dropped, and a result that is not a dict is a :class:`ProviderError` (the caller keeps its last good data).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from serve import queries
from serve.world import Member, Roster, ServerInfo, database_order
from shared.db import DATABASE_ERRORS
from shared.discord_rules import DEFAULT_ROLE_COLOR as DEFAULT_ROLE_COLOR  # one of the callbacks' defaults
from shared.errors import DzoneError
from shared.feed import ServerChanged

log = structlog.get_logger(__name__)

DEFAULT_USERNAME = "Unknown"
DEFAULT_STATUS = "offline"

ServerDataCallback = Callable[[], Awaitable[dict[str, Any]]]
UserDataCallback = Callable[[str], Awaitable[dict[str, Any]]]


class ProviderError(DzoneError):
    """A data source failed or returned something unusable; the message says which and why."""


# ---------------------------------------------------------------- PostgreSQL


async def db_servers(pool: asyncpg.Pool) -> list[ServerInfo]:
    """Enabled, present servers in server-list order; ``id`` is the alias when there is one."""
    try:
        rows = await pool.fetch(queries.SERVERS)
    except DATABASE_ERRORS as exc:
        raise ProviderError(f"reading discord_servers failed: {exc!r}") from exc
    servers = [
        ServerInfo(
            key=r["server_id"],
            id=r["alias"] or r["server_id"],
            name=r["name"],
            passworded=r["passworded"],
            is_default=r["is_default"],
            hide_offline=r["hide_offline"],
            relay_messages=r["relay_messages"],
            oauth_client_id=r["oauth_client_id"],
            created_at=r["created_at"],
        )
        for r in rows
    ]
    return sorted(servers, key=database_order)  # exactly the order feed updates keep


def feed_server(event: ServerChanged) -> ServerInfo | None:
    """The directory entry a ``server`` notification describes; None when viewers may not join it."""
    row = event.row
    if row is None or not row.joinable:
        return None
    return ServerInfo(
        key=event.server_id,
        id=row.alias or event.server_id,
        name=row.name,
        passworded=row.passworded,
        is_default=row.is_default,
        hide_offline=row.hide_offline,
        relay_messages=row.relay_messages,
        oauth_client_id=row.oauth_client_id,
        created_at=row.created_at,
    )


async def db_members(pool: asyncpg.Pool, key: str) -> Roster:
    """All members of one server, oldest change first (so ``touched`` follows ``last_seen``)."""
    try:
        rows = await pool.fetch(queries.MEMBERS, key)
    except DATABASE_ERRORS as exc:
        raise ProviderError(f"reading discord_users of {key} failed: {exc!r}") from exc
    rows.sort(key=lambda r: (r["last_seen"] is not None, r["last_seen"]))
    shown = {
        r["user_id"]: Member(r["username"], r["status"], r["role_color"]) for r in rows if not r["hidden"]
    }
    return Roster(shown, frozenset(r["user_id"] for r in rows if r["hidden"]))


async def db_is_member(pool: asyncpg.Pool, key: str, user_id: str) -> bool:
    try:
        return bool(await pool.fetchval(queries.IS_MEMBER, key, user_id))
    except DATABASE_ERRORS as exc:
        raise ProviderError(f"membership check in {key} failed: {exc!r}") from exc


# ---------------------------------------------------------------- callbacks


async def call_provider(what: str, call: Awaitable[Any], timeout: float) -> Any:
    """Await a registered callback with a timeout; any failure becomes a ProviderError naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise ProviderError(f"{what} did not answer within {timeout:g}s") from None
    except Exception as exc:
        raise ProviderError(f"{what} raised {exc!r}") from exc


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def validate_servers(raw: Any) -> list[ServerInfo]:
    """on_get_server_data output -> ServerInfo list (keys are the guild keys passed to on_get_user_data)."""
    if not isinstance(raw, dict):
        raise ProviderError(f"on_get_server_data returned {type(raw).__name__}, expected a dict")
    servers, dropped, seen_ids = [], [], set()
    for key, entry in raw.items():
        key_text = _text(key)
        if key_text is None or not isinstance(entry, dict):
            dropped.append(str(key)[:40])
            continue
        server_id = _text(entry.get("id")) or key_text
        if server_id in seen_ids:
            dropped.append(key_text)
            continue
        seen_ids.add(server_id)
        if "password" in entry:
            log.warning("legacy_password_ignored", server=key_text, hint="use passworded + Discord OAuth")
        servers.append(
            ServerInfo(
                key=key_text,
                id=server_id,
                name=_text(entry.get("name")) or server_id,
                passworded=bool(entry.get("passworded", False)),
                is_default=bool(entry.get("default", False)),
                hide_offline=bool(entry.get("hide_offline", False)),
                relay_messages=bool(entry.get("relay_messages", True)),
                oauth_client_id=_text(entry.get("clientId")),
            )
        )
    if dropped:
        log.warning(
            "provider_entries_dropped", provider="on_get_server_data", count=len(dropped), keys=dropped[:5]
        )
    return servers


def validate_users(raw: Any, guild_key: str) -> dict[str, Member]:
    """on_get_user_data output -> members; the guide's defaults fill gaps, unusable entries are dropped."""
    if not isinstance(raw, dict):
        raise ProviderError(f"on_get_user_data({guild_key}) returned {type(raw).__name__}, expected a dict")
    members: dict[str, Member] = {}
    dropped = []
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            dropped.append(str(key)[:40])
            continue
        uid = _text(entry.get("uid")) or _text(key)
        username = entry.get("username", DEFAULT_USERNAME)
        status = entry.get("status", DEFAULT_STATUS)
        color = entry.get("roleColor", DEFAULT_ROLE_COLOR)
        if uid is None or not isinstance(username, str) or not isinstance(status, str):
            dropped.append(str(key)[:40])
            continue
        members[uid] = Member(username, status, color if isinstance(color, str) else DEFAULT_ROLE_COLOR)
    if dropped:
        log.warning(
            "provider_entries_dropped",
            provider="on_get_user_data",
            guild=guild_key,
            count=len(dropped),
            keys=dropped[:5],
        )
    return members
