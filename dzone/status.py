"""``dzone status``: what an operator wants to know at a glance, read from the database.

Per server: members by status, how many the visibility rules hide, and the last change (view
``server_presence_summary``); the last changes made from Discord (``command_audit``); the serve
processes listening on the change feed (``pg_stat_activity``), each asked on the probe channel whether it
hears the feed (shared/probe.py: a deaf one does not answer); the sessions of every dzone process by
application_name; how full the NOTIFY queue is (``pg_notification_queue_usage()``). Everything but the
feed check comes from SQL an operator can also run in psql.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import click

from shared import probe
from shared.db import APP_STATUS, DATABASE_ERRORS, Pooler, connect, describe_connect_error, redacted
from shared.errors import DzoneError
from shared.feed import CHANNEL, LISTENER_APPLICATION_NAME
from shared.settings import ConfigError, DatabaseSettings, load

SERVERS_SQL = """
SELECT server_id, name, alias, enabled, is_default, bot_present,
       members, online, idle, dnd, offline, hidden, last_change
FROM server_presence_summary
ORDER BY is_default DESC, name, server_id
"""

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

# Every session of a dzone process, by the application_name each kind of connection carries (shared/db.py).
SESSIONS_SQL = """
SELECT application_name, coalesce(state, '-') AS state, count(*) AS sessions
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'dzone%'
GROUP BY 1, 2
ORDER BY 1, 2
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
class SessionCount:
    """How many sessions of one dzone application_name are in one state."""

    application_name: str
    state: str
    sessions: int


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
    sessions: list[SessionCount] = field(default_factory=list)
    # The feed check: the serves that answered (None: not checked), and how long status waited.
    answers: list[probe.Answer] | None = None
    feed_wait_s: float = 0.0
    audit: list[AuditRow] = field(default_factory=list)


async def read_status(
    url: str, *, op_timeout_s: float = 10.0, feed_wait_s: float = 2.0, pooler: Pooler = "none"
) -> Status:
    """Run the queries on one connection, then ask the listeners whether they hear the feed.

    Behind a transaction pooler the ask is skipped: this session's own LISTEN would hear nothing.
    """
    try:
        conn = await connect(url, timeout=op_timeout_s, application_name=APP_STATUS, pooler=pooler)
    except DATABASE_ERRORS as exc:
        raise StatusError(f"cannot connect to {redacted(url)}: {describe_connect_error(exc)}") from None
    try:
        servers = [ServerRow(**dict(row)) for row in await conn.fetch(SERVERS_SQL, timeout=op_timeout_s)]
        listener_rows = await conn.fetch(LISTENERS_SQL, timeout=op_timeout_s)
        listeners = [ListenerRow(**dict(row)) for row in listener_rows]
        usage = float(await conn.fetchval(QUEUE_USAGE_SQL, timeout=op_timeout_s))
        shard_rows = await conn.fetch(INGEST_SHARDS_SQL, timeout=op_timeout_s)
        ingest_shards = [IngestShardRow(**dict(row)) for row in shard_rows]
        sessions = [SessionCount(**dict(row)) for row in await conn.fetch(SESSIONS_SQL, timeout=op_timeout_s)]
        answers = None
        if pooler != "transaction" and listeners and feed_wait_s > 0:
            answers = await ask_listeners(conn, len(listeners), feed_wait_s, op_timeout_s)
        audit_rows = await conn.fetch(AUDIT_SQL, AUDIT_ROWS_SHOWN, timeout=op_timeout_s)
        audit = [AuditRow(**dict(row)) for row in audit_rows]
    except asyncpg.UndefinedTableError:
        raise StatusError("the database has no dzone schema yet: run `dzone migrate`") from None
    except DATABASE_ERRORS as exc:
        raise StatusError(f"reading {redacted(url)} failed: {describe_connect_error(exc)}") from None
    finally:
        await conn.close()
    return Status(
        servers=servers,
        listeners=listeners,
        queue_usage=usage,
        ingest_shards=ingest_shards,
        sessions=sessions,
        answers=answers,
        feed_wait_s=feed_wait_s,
        audit=audit,
    )


async def ask_listeners(
    conn: asyncpg.Connection, expected: int, wait_s: float, op_timeout_s: float
) -> list[probe.Answer]:
    """NOTIFY an ask on the probe channel; the answers that came back within ``wait_s`` (fewer than
    ``expected`` only after the wait: every serve that hears the feed answers at once)."""
    nonce = uuid.uuid4().hex
    answers: list[probe.Answer] = []
    all_in = asyncio.Event()

    def on_answer(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = probe.decode(payload)
        except probe.ProbeDecodeError:
            return  # not ours to judge: the serve logs what it cannot read
        if isinstance(message, probe.Answer) and message.nonce == nonce:
            answers.append(message)
            if len(answers) >= expected:
                all_in.set()

    await conn.add_listener(probe.ANSWER_CHANNEL, on_answer)
    try:
        await conn.execute(
            probe.NOTIFY, probe.PROBE_CHANNEL, probe.encode(probe.Ask(nonce)), timeout=op_timeout_s
        )
        with contextlib.suppress(TimeoutError):  # the silent ones are the deaf ones
            await asyncio.wait_for(all_in.wait(), wait_s)
    finally:
        await conn.remove_listener(probe.ANSWER_CHANNEL, on_answer)
    return answers


def _feed_cell(status: Status, answer: probe.Answer | None) -> str:
    """live (with the serve's last probe round trip), deaf, or not checked."""
    if status.answers is None:
        return "not checked"
    if answer is None:
        return f"DEAF (no answer in {status.feed_wait_s:g}s)"
    trip = "" if answer.round_trip_ms is None else f", probe {answer.round_trip_ms:.0f} ms"
    return f"live ({answer.instance}{trip})"


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
        answered = {a.listener_pid: a for a in status.answers or []}
        rows = [
            [
                str(li.pid),
                li.application_name or "-",
                li.client_addr or "local",
                _when(li.backend_start),
                li.state or "-",
                _feed_cell(status, answered.get(li.pid)),
            ]
            for li in status.listeners
        ]
        sections.append(
            f"Feed listeners ({len(status.listeners)})\n"
            + table(["pid", "application", "client", "connected since", "state", "feed"], rows)
        )
        seen = {li.pid for li in status.listeners}
        for other in (a for a in status.answers or [] if a.listener_pid not in seen):
            sections[-1] += f"\n(also answered: serve {other.instance}, listening through another path)"
        if status.answers is None:
            sections[-1] += "\n(feed not checked: behind a transaction pooler, set DATABASE_DIRECT_URL)"
    else:
        sections.append("Feed listeners (0)\n(no serve process is listening on the change feed)")
    if status.sessions:
        rows = [[c.application_name, c.state, str(c.sessions)] for c in status.sessions]
        sections.append("Sessions of dzone processes\n" + table(["application", "state", "sessions"], rows))
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
@click.option(
    "--feed-wait",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds to wait for the feed listeners' answers (0: do not ask).",
)
def status(timeout: float, feed_wait: float) -> None:
    """Summarise the database at DATABASE_URL (DATABASE_DIRECT_URL when set): servers and members by
    status, feed listeners and whether each hears the feed, dzone sessions, NOTIFY queue."""
    try:
        settings = load(DatabaseSettings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    url = settings.session_url
    if url is None:
        raise click.ClickException("DATABASE_URL is not set (dzone demo prints the URL of its database)")
    try:
        result = asyncio.run(
            read_status(url, op_timeout_s=timeout, feed_wait_s=feed_wait, pooler=settings.session_pooler)
        )
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(result))
