"""The writer's statements against PostgreSQL, one function per kind of work (SQL text in ingest.queries).

Each function runs on the connection it is given and returns what it did; retries, batching and the
pending state are the writer's (ingest.writer, ingest.pending). A row the schema refuses never sinks its
neighbours: it is logged and counted, the rest written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg
import orjson
import structlog

from ingest import queries
from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, RoleRow, server_name
from ingest.pending import ChatLine

log = structlog.get_logger(__name__)

# The server refused one row's data: that row is dropped (logged, counted), its neighbours written.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


class SyncResult(NamedTuple):
    changes: int
    bulk: bool


def columns(rows: Sequence[tuple[str | bool, ...]], width: int) -> list[list[str | bool]]:
    """Tuples -> ``width`` parallel lists, the shape ``unnest($1::text[], ...)`` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def rows_json(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as one JSON array of arrays, the shape WRITE_MEMBERS reads (orjson does not take NamedTuples)."""
    return orjson.dumps(rows, default=tuple).decode()


async def write_members(
    conn: asyncpg.Connection, upserts: list[MemberRow], deletes: list[tuple[str, str]]
) -> int:
    """Upsert and delete member rows in one statement; returns how many rows the schema refused."""
    try:
        await conn.execute(queries.WRITE_MEMBERS, rows_json(upserts), rows_json(deletes))
    except ROW_ERRORS as exc:
        # A row the schema refuses must not sink its neighbours: write one by one, log the bad ones.
        log.error("batch_rejected", error=f"{type(exc).__name__}: {exc}", rows=len(upserts) + len(deletes))
        return await _write_one_by_one(conn, upserts, deletes)
    return 0


async def _write_one_by_one(
    conn: asyncpg.Connection, upserts: list[MemberRow], deletes: list[tuple[str, str]]
) -> int:
    rejected = 0
    items: list[tuple[list[MemberRow], list[tuple[str, str]]]] = [([row], []) for row in upserts]
    items += [([], [pair]) for pair in deletes]
    for rows, pairs in items:
        try:
            await conn.execute(queries.WRITE_MEMBERS, rows_json(rows), rows_json(pairs))
        except ROW_ERRORS as exc:
            rejected += 1
            log.error(
                "row_rejected",
                row=rows[0] if rows else None,
                delete=pairs[0] if pairs else None,
                error=f"{type(exc).__name__}: {exc}",
            )
    return rejected


async def write_channels(conn: asyncpg.Connection, server_ids: set[str], rows: list[ChannelRow]) -> None:
    """Make the channel rows of these guilds equal ``rows`` in one statement (``relay`` untouched)."""
    try:
        await conn.execute(queries.WRITE_CHANNELS, *columns(rows, 4), sorted(server_ids))
    except ROW_ERRORS as exc:
        # Fail closed: the stored rows may be stale, so no chat of these guilds is relayed (unless an
        # operator set relay) until a later channel event writes them again.
        log.error(
            "channels_rejected",
            server_ids=sorted(server_ids),
            channels=len(rows),
            error=f"{type(exc).__name__}: {exc}",
        )
        await conn.execute(queries.CHANNELS_CLOSE, sorted(server_ids))


async def relay_messages(conn: asyncpg.Connection, messages: list[ChatLine]) -> int | None:
    """Announce the chat lines the relay rule lets through; how many it did (None: refused)."""
    try:
        status = await conn.execute(queries.RELAY_MESSAGES, *columns(messages, 5))
    except ROW_ERRORS as exc:
        log.error("messages_rejected", error=f"{type(exc).__name__}: {exc}", messages=len(messages))
        return None
    return int(status.rsplit(" ", 1)[-1])  # "SELECT n": the messages the relay rule let through


async def write_roles(conn: asyncpg.Connection, server_id: str, roles: Sequence[RoleRow]) -> None:
    """Make the guild's discord_roles rows equal ``roles`` (ids and names, for the visibility rules)."""
    await conn.execute(queries.WRITE_ROLES, server_id, *columns(roles, 2))


async def full_sync(
    conn: asyncpg.Connection,
    server_id: str,
    name: str,
    rows: Sequence[MemberRow],
    bulk_threshold: int,
    roles: Sequence[RoleRow] | None = None,
) -> SyncResult:
    """Make the guild's rows (and its roles, when given) equal ``rows`` in one transaction, announcing only
    real changes. The roles go first, so the members are judged by the names rules may give."""
    async with conn.transaction():
        await conn.execute(queries.SERVER_UPSERT_SYNCED, server_id, server_name(name, server_id))
        await conn.execute(queries.SYNC_LOCK_SERVER, server_id)
        if roles is not None:
            await write_roles(conn, server_id, roles)
        if not await conn.fetchval(queries.SYNC_HAS_ROWS, server_id):
            return await _first_sync(conn, server_id, rows, bulk_threshold)
        await conn.execute(queries.SYNC_CREATE_TEMP)
        await conn.copy_records_to_table(
            queries.SYNC_TEMP_TABLE,
            records=(row[1:] for row in rows),
            columns=("user_id", "username", "status", "role_color", "role_ids"),
        )
        await conn.execute(f"ANALYZE {queries.SYNC_TEMP_TABLE}")
        changed = int((await conn.execute(queries.SYNC_CREATE_CHANGED, server_id)).rsplit(" ", 1)[-1])
        departed = int(await conn.fetchval(queries.SYNC_COUNT_DEPARTED, server_id))
        changes = changed + departed
        bulk = changes >= bulk_threshold
        if bulk:
            await conn.execute(queries.BULK_MODE)
        if changed:
            await conn.execute(queries.SYNC_UPDATE, server_id)
            await conn.execute(queries.SYNC_INSERT, server_id)
        if departed:
            await conn.execute(queries.SYNC_DELETE_DEPARTED, server_id)
        if bulk:
            await _finish_bulk(conn, server_id)
    return SyncResult(changes, bulk)


async def _first_sync(
    conn: asyncpg.Connection, server_id: str, rows: Sequence[MemberRow], bulk_threshold: int
) -> SyncResult:
    """The guild has no rows yet: nothing to compare or delete, so the snapshot is copied straight in."""
    bulk = len(rows) >= bulk_threshold
    if bulk:
        await conn.execute(queries.BULK_MODE)
    # Binary COPY of every MemberRow field: no staging table, no diff, no ON CONFLICT probe per row.
    await conn.copy_records_to_table(
        queries.USERS_TABLE, records=(_stored(row) for row in rows), columns=MemberRow._fields
    )
    if bulk:
        await _finish_bulk(conn, server_id)
    return SyncResult(len(rows), bulk)


async def _finish_bulk(conn: asyncpg.Connection, server_id: str) -> None:
    """End of a bulk write (the per-row triggers were off): judge the server's visibility at once, then
    announce one resync (docs/change-feed.md, bulk mode)."""
    await conn.execute(queries.RECOMPUTE_HIDDEN, server_id)
    await conn.execute(queries.NOTIFY_RESYNC, server_id)


def _stored(row: MemberRow) -> tuple[str | list[str], ...]:
    """A MemberRow as discord_users stores it: the role ids (its last field, comma-separated) as text[]."""
    return (*row[:-1], row.role_ids.split(",") if row.role_ids else [])


async def depart(conn: asyncpg.Connection, server_id: str, bulk_threshold: int) -> SyncResult:
    """Mark the server departed and delete its members (one resync instead of row events when many)."""
    async with conn.transaction():
        await conn.execute(queries.SERVER_DEPART, server_id)
        members = int(await conn.fetchval(queries.COUNT_SERVER_USERS, server_id))
        bulk = members >= bulk_threshold
        if bulk:
            await conn.execute(queries.BULK_MODE)
        await conn.execute(queries.USERS_DELETE_SERVER, server_id)
        if bulk:
            await _finish_bulk(conn, server_id)
    return SyncResult(members, bulk)


async def rename(conn: asyncpg.Connection, server_id: str, name: str) -> None:
    await conn.execute(queries.SERVER_RENAME, server_id, name)


async def present_servers(conn: asyncpg.Connection) -> list[str]:
    """Servers the database believes the bot is in."""
    return [record["server_id"] for record in await conn.fetch(queries.SERVERS_PRESENT)]


async def heartbeat(
    conn: asyncpg.Connection,
    instance: str,
    shard_count: int | None,
    pending_rows: int,
    started_at: datetime,
    shards: list[tuple[int, str, float | None]],
) -> None:
    """Refresh this process's row per shard in ingest_heartbeat."""
    ids, states, latencies = (
        (list(column) for column in zip(*shards, strict=True)) if shards else ([], [], [])
    )
    await conn.execute(
        queries.HEARTBEAT, instance, shard_count, pending_rows, started_at, ids, states, latencies
    )


async def probe(conn: asyncpg.Connection) -> None:
    """The server answers and takes writes (a standby after a failover does not)."""
    if await conn.fetchval(queries.PROBE_READ_ONLY):
        raise asyncpg.ReadOnlySQLTransactionError("the database is in recovery (read-only)")
