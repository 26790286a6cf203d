"""``dzone status``: what an operator wants to know at a glance, read from the database.

Per server: members by status, how many the visibility rules hide, and the last change (view
``server_presence_summary``); the last changes made from Discord (``command_audit``); the serve
processes listening on the change feed (``pg_stat_activity``); how full the NOTIFY queue is
(``pg_notification_queue_usage()``). Everything comes from SQL an operator can also run in psql.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import click

from shared.db import redacted
from shared.errors import DzoneError
from shared.feed import CHANNEL, LISTENER_APPLICATION_NAME
from shared.settings import ConfigError, DatabaseSettings, load

SERVERS_SQL = """
SELECT server_id, name, alias, enabled, is_default, bot_present,
       members, online, idle, dnd, offline, hidden, last_change
FROM server_presence_summary
ORDER BY is_default DESC, name, server_id
"""

# The application_name a serve gives its LISTEN connection, so that operators can tell it apart.

# PostgreSQL does not show who LISTENs. A feed listener is a session that names itself so, or whose
# last statement was the LISTEN (asyncpg sends it once, then the session sits idle waiting).
LISTENERS_SQL = f"""
SELECT pid, application_name, host(client_addr) AS client_addr, backend_start, state
FROM pg_stat_activity
WHERE datname = current_database()
  AND pid <> pg_backend_pid()
  AND (application_name = '{LISTENER_APPLICATION_NAME}' OR query ILIKE 'LISTEN%{CHANNEL}%')
ORDER BY backend_start
"""

QUEUE_USAGE_SQL = "SELECT pg_notification_queue_usage() AS usage"

# Each ingest process refreshes one row per shard every few seconds (ingest/queries.py HEARTBEAT).
INGEST_SHARDS_SQL = """
SELECT instance, shard_id, shard_count, state, latency_ms, pending_rows,
       extract(epoch FROM now() - updated_at)::float8 AS seen_s_ago
FROM ingest_heartbeat
ORDER BY shard_id, updated_at DESC
"""
# The last changes made from Discord with the /dzone commands (ingest/actions.py writes them).
AUDIT_SQL = """
SELECT at, server_id, user_id, user_name, command, change
FROM command_audit ORDER BY at DESC, audit_id DESC LIMIT $1
"""
AUDIT_ROWS_SHOWN = 10
STALE_HEARTBEAT_S = 30.0  # a shard silent this long is shown as stale (its process is gone or stuck)


class StatusError(DzoneError):
    """The database could not be read (unreachable, or not migrated)."""


@dataclass(frozen=True)
class ServerRow:
    """One line of server_presence_summary."""

    server_id: str
    name: str
    alias: str | None
    enabled: bool
    is_default: bool
    bot_present: bool
    members: int
    online: int
    idle: int
    dnd: int
    offline: int
    hidden: int  # members the visibility rules leave out (counted in the columns before too)
    last_change: datetime | None


@dataclass(frozen=True)
class ListenerRow:
    """One database session listening on the change feed."""

    pid: int
    application_name: str
    client_addr: str | None
    backend_start: datetime
    state: str | None


@dataclass(frozen=True)
class IngestShardRow:
    """One shard of one ingest process, as its last heartbeat said."""

    instance: str
    shard_id: int
    shard_count: int | None
    state: str
    latency_ms: float | None
    pending_rows: int
    seen_s_ago: float


@dataclass(frozen=True)
class AuditRow:
    """One change made from Discord with a /dzone command."""

    at: datetime
    server_id: str
    user_id: str
    user_name: str
    command: str
    change: str


@dataclass(frozen=True)
class Status:
    """Everything ``dzone status`` shows."""

    servers: list[ServerRow]
    listeners: list[ListenerRow]
    queue_usage: float
    ingest_shards: list[IngestShardRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)


async def read_status(url: str, *, op_timeout_s: float = 10.0) -> Status:
    """Run the three queries on one connection."""
    try:
        conn = await asyncpg.connect(url, timeout=op_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StatusError(f"cannot connect to {redacted(url)}: {exc}") from None
    try:
        servers = [ServerRow(**dict(row)) for row in await conn.fetch(SERVERS_SQL, timeout=op_timeout_s)]
        listener_rows = await conn.fetch(LISTENERS_SQL, timeout=op_timeout_s)
        listeners = [ListenerRow(**dict(row)) for row in listener_rows]
        usage = float(await conn.fetchval(QUEUE_USAGE_SQL, timeout=op_timeout_s))
        shard_rows = await conn.fetch(INGEST_SHARDS_SQL, timeout=op_timeout_s)
        ingest_shards = [IngestShardRow(**dict(row)) for row in shard_rows]
        audit_rows = await conn.fetch(AUDIT_SQL, AUDIT_ROWS_SHOWN, timeout=op_timeout_s)
        audit = [AuditRow(**dict(row)) for row in audit_rows]
    except asyncpg.UndefinedTableError:
        raise StatusError("the database has no dzone schema yet: run `dzone migrate`") from None
    finally:
        await conn.close()
    return Status(
        servers=servers, listeners=listeners, queue_usage=usage, ingest_shards=ingest_shards, audit=audit
    )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table (numbers right-aligned), no box-drawing, pipe-friendly."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    # a column whose cells are all numbers is right-aligned, header included
    numeric = [
        bool(rows) and all(row[i].replace(".", "", 1).isdigit() for row in rows) for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def render(status: Status) -> str:
    """The human-readable report."""
    sections: list[str] = []
    if status.servers:
        rows = []
        for s in status.servers:
            flags = ",".join(
                flag
                for flag, on in (
                    ("default", s.is_default),
                    ("disabled", not s.enabled),
                    ("bot-left", not s.bot_present),
                )
                if on
            )
            rows.append(
                [
                    s.server_id,
                    s.alias or "-",
                    s.name,
                    flags or "-",
                    str(s.members),
                    str(s.online),
                    str(s.idle),
                    str(s.dnd),
                    str(s.offline),
                    str(s.hidden),
                    _when(s.last_change),
                ]
            )
        sections.append(
            f"Servers ({len(status.servers)})\n"
            + table(
                [
                    "server_id",
                    "alias",
                    "name",
                    "flags",
                    "members",
                    "online",
                    "idle",
                    "dnd",
                    "offline",
                    "hidden",
                    "last change",
                ],
                rows,
            )
        )
    else:
        sections.append("Servers (0)\n(no servers yet: is the ingest running?)")
    if status.listeners:
        rows = [
            [
                str(li.pid),
                li.application_name or "-",
                li.client_addr or "local",
                _when(li.backend_start),
                li.state or "-",
            ]
            for li in status.listeners
        ]
        sections.append(
            f"Feed listeners ({len(status.listeners)})\n"
            + table(["pid", "application", "client", "connected since", "state"], rows)
        )
    else:
        sections.append("Feed listeners (0)\n(no serve process is listening on the change feed)")
    if status.ingest_shards:
        rows = [
            [
                str(sh.shard_id),
                "-" if sh.shard_count is None else str(sh.shard_count),
                sh.instance,
                sh.state if sh.seen_s_ago < STALE_HEARTBEAT_S else f"stale ({sh.state})",
                "-" if sh.latency_ms is None else f"{sh.latency_ms:.0f}",
                str(sh.pending_rows),
                f"{sh.seen_s_ago:.0f}",
            ]
            for sh in status.ingest_shards
        ]
        sections.append(
            f"Ingest shards ({len(status.ingest_shards)})\n"
            + table(["shard", "of", "instance", "state", "latency ms", "pending", "seen s ago"], rows)
        )
    else:
        sections.append("Ingest shards (0)\n(no ingest has reported: is it running?)")
    if status.audit:
        rows = [
            [_when(a.at), a.server_id, f"{a.user_name} ({a.user_id})", a.command, a.change]
            for a in status.audit
        ]
        sections.append(
            f"Last changes from Discord ({len(status.audit)}, newest first; all: SELECT * FROM command_audit)\n"
            + table(["when", "server_id", "by", "command", "change"], rows)
        )
    sections.append(f"NOTIFY queue usage: {status.queue_usage * 100:.4f}% (pg_notification_queue_usage)")
    return "\n\n".join(sections)


@click.command()
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds for connect and each query."
)
def status(timeout: float) -> None:
    """Summarise the database at DATABASE_URL: servers and members by status, feed listeners, NOTIFY queue."""
    try:
        url = load(DatabaseSettings).database_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if url is None:
        raise click.ClickException("DATABASE_URL is not set (dzone demo prints the URL of its database)")
    try:
        result = asyncio.run(read_status(url, op_timeout_s=timeout))
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(result))
