"""The coalescing writer: discord.py handlers hand it state, it commits the latest state in batches.

Handlers call :meth:`Writer.put` / :meth:`Writer.remove` (no I/O, a dict assignment). Pending state is
kept per (server, user), so the queue is bounded by the number of members, never by the event rate,
and the latest state wins. One task commits batches (``batch_max_rows`` rows or ``batch_max_delay_s``,
whichever first) on one connection, one statement per batch. When PostgreSQL is unreachable the batch
goes back into the pending state (unless something newer arrived), the task retries with backoff, and
after a long outage it asks for a full sync of every guild. Guild-level work (full sync, rename,
departure) runs before the live rows of the same flush, and supersedes older pending rows of that guild.
Channel rows (the relay rule's input) are re-read per guild and written after the guild work and before
the chat of the same flush, so a message is judged by its channel as the gateway last described it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import asyncpg
import structlog

from ingest import queries
from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, clean_text, server_name
from shared.db import redacted
from shared.feed import MESSAGE_MAX_CHARS

log = structlog.get_logger(__name__)

# Transient failures: the server is down, restarting, unreachable, or cancelled our statement.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    # The protocol state is broken (seen when the server shuts down under a live connection): a new
    # connection fixes it, so it is handled like a lost connection.
    asyncpg.InternalClientError,
)


class GuildSnapshot(NamedTuple):
    """A guild as the gateway cache has it right now: its name and every member's row."""

    name: str
    rows: list[MemberRow]


class GuildSource(Protocol):
    """Where full syncs read the truth from (the discord.py cache in production)."""

    def snapshot(self, server_id: str) -> GuildSnapshot | None:
        """The guild's current state, or None when this worker no longer sees the guild."""

    def server_ids(self) -> Iterable[str]:
        """Every guild this worker currently sees (its own shards only)."""

    def owns(self, server_id: str) -> bool:
        """Whether the guild belongs to one of this worker's shards."""

    def channels(self, server_id: str) -> list[ChannelRow] | None:
        """Every channel of the guild with its relay default, or None when the guild is not seen."""


class ChatLine(NamedTuple):
    """A chat message to announce (never stored)."""

    server_id: str
    user_id: str
    channel_id: str
    message_id: str
    text: str


@dataclass(frozen=True)
class WriterConfig:
    """Batching, retry and bound settings of the writer."""

    batch_max_rows: int = 2000
    batch_max_delay_s: float = 0.005
    bulk_threshold: int = 500  # a full sync changing at least this many rows announces one resync
    resync_after_outage_s: float = 30.0
    message_queue_max: int = 10_000
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    stats_interval_s: float = 10.0


@dataclass
class WriterStats:
    """Counters since start plus recent latency samples (seconds), for logs and the benchmark."""

    events: int = 0
    rows_committed: int = 0
    batches: int = 0
    full_syncs: int = 0
    messages_relayed: int = 0
    messages_dropped: int = 0
    messages_withheld: int = 0  # not relayed: server or channel not relayed, or an unknown channel
    rows_rejected: int = 0
    reconnects: int = 0
    commit_latency: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    event_latency: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))


class _Op(NamedTuple):
    kind: str  # "sync" | "depart" | "rename"
    name: str = ""


_Entry = tuple[MemberRow | None, float]  # None: delete the row; float: monotonic enqueue time


def percentile(samples: Iterable[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``samples``; 0.0 when there are none."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Writer:
    """Owns the pending state and the one task that writes it to PostgreSQL."""

    def __init__(self, database_url: str, source: GuildSource, config: WriterConfig | None = None) -> None:
        self._url = database_url
        self._source = source
        self.config = config or WriterConfig()
        self.stats = WriterStats()
        self._pending: dict[str, dict[str, _Entry]] = {}
        self._n_pending = 0
        self._ops: dict[str, _Op] = {}
        self._reconcile: set[str] | None = None
        self._channel_syncs: set[str] = set()  # guilds whose channel rows are re-read at the next flush
        self._messages: deque[ChatLine] = deque()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._conn: asyncpg.Connection | None = None
        self._outage_started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._committed = asyncio.Condition()
        self._flushing = False  # a batch is taken but not yet committed
        self._closed = False  # the task has ended: later work cannot be written

    # --- called by handlers: no I/O, O(1) ---------------------------------------------------------
    def put(self, row: MemberRow) -> None:
        """Make ``row`` the pending state of its (server, user)."""
        guild = self._pending.get(row[0])
        if guild is None:
            guild = self._pending[row[0]] = {}
        if row[1] not in guild:
            self._n_pending += 1
            if self._n_pending >= self.config.batch_max_rows:
                self._full.set()
        guild[row[1]] = (row, time.monotonic())
        self.stats.events += 1
        self._wake.set()

    def remove(self, server_id: str, user_id: str) -> None:
        """The member left: delete its row (unless it comes back before the next flush)."""
        guild = self._pending.get(server_id)
        if guild is None:
            guild = self._pending[server_id] = {}
        if user_id not in guild:
            self._n_pending += 1
        guild[user_id] = (None, time.monotonic())
        self.stats.events += 1
        self._wake.set()

    def sync_guild(self, server_id: str) -> None:
        """Re-read the whole guild from the source at the next flush (upsert all, delete the departed)."""
        if self._closed:
            log.info("writer_closed_ignoring", work="sync", server_id=server_id)
            return
        self._ops[server_id] = _Op("sync")
        self._channel_syncs.add(server_id)
        self._wake.set()

    def sync_channels(self, server_id: str) -> None:
        """Re-read the guild's channels at the next flush: upsert every one, delete the vanished ones."""
        self._channel_syncs.add(server_id)
        self._wake.set()

    def depart_guild(self, server_id: str) -> None:
        """The bot left the guild: mark the server departed and delete its members' rows."""
        self._ops[server_id] = _Op("depart")
        self._channel_syncs.discard(server_id)
        dropped = self._pending.pop(server_id, None)  # older than the departure
        if dropped:
            self._n_pending -= len(dropped)
        self._wake.set()

    def rename_guild(self, server_id: str, name: str) -> None:
        """Keep the server's name current (a pending full sync writes the name anyway)."""
        if self._ops.get(server_id, _Op("")).kind in ("sync", "depart"):
            return  # the sync reads the current name; a departed guild keeps its last name
        self._ops[server_id] = _Op("rename", server_name(name, server_id))
        self._wake.set()

    def reconcile(self, present_server_ids: Iterable[str]) -> None:
        """After startup: servers of our shards the database lists but the gateway does not are departed."""
        if self._closed:
            log.info("writer_closed_ignoring", work="reconcile")
            return
        self._reconcile = set(present_server_ids)
        self._wake.set()

    def relay_message(
        self, server_id: str, user_id: str, channel_id: str, message_id: str, text: str
    ) -> None:
        """Announce a chat message (kept in order; the oldest are dropped beyond the bound)."""
        if len(self._messages) >= self.config.message_queue_max:
            self._messages.popleft()
            self.stats.messages_dropped += 1
            if self.stats.messages_dropped % 1000 == 1:
                log.warning(
                    "message_queue_full",
                    dropped_total=self.stats.messages_dropped,
                    bound=self.config.message_queue_max,
                )
        self._messages.append(
            ChatLine(server_id, user_id, channel_id, message_id, clean_text(text, MESSAGE_MAX_CHARS))
        )
        self._wake.set()

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be committed (after coalescing)."""
        return self._n_pending

    def idle(self) -> bool:
        """Nothing is waiting to be written."""
        return not (
            self._n_pending
            or self._ops
            or self._channel_syncs
            or self._messages
            or self._reconcile is not None
            or self._flushing
        )

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writing task (and the periodic rate log)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ingest-writer")
            if self.config.stats_interval_s > 0:
                self._stats_task = asyncio.create_task(self._log_rates(), name="ingest-rates")

    async def close(self, timeout: float = 10.0) -> bool:
        """Flush what is pending (up to ``timeout`` s) and stop; True when nothing was left behind."""
        self._stopping = True
        self._wake.set()
        self._full.set()
        flushed = True
        pending_at_close = not self.idle()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                flushed = False
                log.error(
                    "writer_flush_timeout",
                    pending_rows=self._n_pending,
                    pending_guild_ops=len(self._ops),
                    pending_messages=len(self._messages),
                    timeout_s=timeout,
                )
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._stats_task is not None:
            self._stats_task.cancel()
            await asyncio.gather(self._stats_task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close(timeout=2)
            self._conn = None
        self._closed = True
        if not self.idle():  # arrived after the flush (discord.py tasks still winding down)
            log.warning(
                "writer_closed_with_late_work",
                pending_rows=self._n_pending,
                guild_ops=len(self._ops),
                messages=len(self._messages),
                pending_at_close=pending_at_close,
            )
        return flushed

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until everything handed to the writer so far is committed (tests, shutdown)."""
        async with self._committed:
            await asyncio.wait_for(self._committed.wait_for(self.idle), timeout)

    # --- the writing task -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if self.idle():
                if self._stopping:
                    self._closed = True
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._stopping and not self._ops and self._n_pending < self.config.batch_max_rows:
                # Batch window: a few ms or a full batch, whichever first.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.config.batch_max_delay_s)
            conn = await self._connection()
            self._flushing = True
            try:
                await self._flush(conn)
            except TRANSIENT_ERRORS as exc:
                await self._lost_connection(exc)
            except asyncpg.InterfaceError as exc:
                if not conn.is_closed():
                    await self._unexpected(exc)
                else:
                    await self._lost_connection(exc)
            except Exception as exc:  # noqa: BLE001 - a bug: logged with traceback, work kept, task lives
                await self._unexpected(exc)
            finally:
                self._flushing = False
            async with self._committed:
                self._committed.notify_all()

    async def _unexpected(self, exc: BaseException) -> None:
        log.error(
            "writer_flush_failed",
            error=f"{type(exc).__name__}: {exc}",
            pending_rows=self._n_pending,
            exc_info=exc,
        )
        await asyncio.sleep(self.config.backoff_max_s)  # the work was put back; do not spin on a bug

    async def _lost_connection(self, exc: BaseException) -> None:
        if self._outage_started is None:
            self._outage_started = time.monotonic()
        log.warning(
            "database_write_failed", error=f"{type(exc).__name__}: {exc}", pending_rows=self._n_pending
        )
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        delay = self.config.backoff_initial_s
        while True:
            try:
                self._conn = await asyncpg.connect(
                    self._url,
                    timeout=self.config.connect_timeout_s,
                    command_timeout=self.config.command_timeout_s,
                )
            except TRANSIENT_ERRORS as exc:
                if self._outage_started is None:
                    self._outage_started = time.monotonic()
                log.warning(
                    "database_unreachable",
                    url=redacted(self._url),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                    pending_rows=self._n_pending,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.config.backoff_max_s)
                continue
            if self._outage_started is not None:
                outage = time.monotonic() - self._outage_started
                self._outage_started = None
                self.stats.reconnects += 1
                log.info("database_reconnected", outage_s=round(outage, 2), pending_rows=self._n_pending)
                if outage >= self.config.resync_after_outage_s:
                    # Anything may have changed (an operator restore, a failover): re-read every guild.
                    for server_id in self._source.server_ids():
                        if server_id not in self._ops:
                            self._ops[server_id] = _Op("sync")
                        self._channel_syncs.add(server_id)
            return self._conn

    async def _flush(self, conn: asyncpg.Connection) -> None:
        """Take everything due, write it; on a transient error put back what was not written."""
        ops, self._ops = self._ops, {}
        reconcile, self._reconcile = self._reconcile, None
        snapshots: dict[str, GuildSnapshot] = {}
        for server_id, op in ops.items():
            if op.kind == "sync":
                # The snapshot is newer than every pending row of its guild.
                dropped = self._pending.pop(server_id, None)
                if dropped:
                    self._n_pending -= len(dropped)
                snapshot = self._source.snapshot(server_id)
                if snapshot is not None:
                    snapshots[server_id] = snapshot
        channel_syncs, self._channel_syncs = self._channel_syncs, set()
        batch = self._take_batch()
        messages = self._take_messages()
        done: set[str] = set()
        try:
            if reconcile is not None:
                await self._apply_reconcile(conn, reconcile, ops)
                reconcile = None
            for server_id, op in ops.items():
                await self._apply_op(conn, server_id, op, snapshots.get(server_id))
                done.add(server_id)
            channels = self._read_channels(channel_syncs)
            if channel_syncs:
                await self._write_channels(conn, channel_syncs, channels)
                channel_syncs = set()
            if batch:
                await self._write_batch(conn, batch)
                batch = []
            if messages:
                await self._write_messages(conn, messages)
                messages = []
        except BaseException:
            self._restore(ops, done, batch, messages, reconcile)
            self._channel_syncs |= channel_syncs
            raise

    def _take_batch(self) -> list[tuple[str, dict[str, _Entry]]]:
        budget = self.config.batch_max_rows
        taken: list[tuple[str, dict[str, _Entry]]] = []
        for server_id in list(self._pending):
            guild = self._pending[server_id]
            if len(guild) <= budget:
                del self._pending[server_id]
                part = guild
            else:
                part = {user_id: guild.pop(user_id) for user_id in list(itertools.islice(guild, budget))}
            taken.append((server_id, part))
            budget -= len(part)
            self._n_pending -= len(part)
            if budget <= 0:
                break
        return taken

    def _take_messages(self) -> list[ChatLine]:
        count = min(len(self._messages), self.config.batch_max_rows)
        return [self._messages.popleft() for _ in range(count)]

    def _restore(
        self,
        ops: dict[str, _Op],
        done: set[str],
        batch: list[tuple[str, dict[str, _Entry]]],
        messages: list[ChatLine],
        reconcile: set[str] | None,
    ) -> None:
        """Put unwritten work back, never over anything newer that arrived meanwhile."""
        for server_id, op in ops.items():
            if server_id not in done and server_id not in self._ops:
                self._ops[server_id] = op
        for server_id, part in batch:
            guild = self._pending.get(server_id)
            if guild is None:
                guild = self._pending[server_id] = {}
            for user_id, entry in part.items():
                if user_id not in guild:
                    guild[user_id] = entry
                    self._n_pending += 1
        self._messages.extendleft(reversed(messages))
        while len(self._messages) > self.config.message_queue_max:
            self._messages.popleft()
            self.stats.messages_dropped += 1
        if reconcile is not None and self._reconcile is None:
            self._reconcile = reconcile

    # --- statements -----------------------------------------------------------------------------------
    async def _write_batch(
        self, conn: asyncpg.Connection, batch: list[tuple[str, dict[str, _Entry]]]
    ) -> None:
        upserts: list[MemberRow] = []
        deletes: list[tuple[str, str]] = []
        stamps: list[float] = []
        for server_id, part in batch:
            for user_id, (row, stamp) in part.items():
                if row is None:
                    deletes.append((server_id, user_id))
                else:
                    upserts.append(row)
                stamps.append(stamp)
        started = time.monotonic()
        try:
            await conn.execute(queries.WRITE_MEMBERS, *_columns(upserts, 5), *_columns(deletes, 2))
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            # A row the schema refuses must not sink its neighbours: write one by one, log the bad ones.
            log.error("batch_rejected", error=f"{type(exc).__name__}: {exc}", rows=len(stamps))
            await self._write_one_by_one(conn, upserts, deletes)
        finished = time.monotonic()
        self.stats.batches += 1
        self.stats.rows_committed += len(stamps)
        self.stats.batch_sizes.append(len(stamps))
        self.stats.commit_latency.append(finished - started)
        self.stats.event_latency.extend(finished - stamp for stamp in stamps)

    async def _write_one_by_one(
        self, conn: asyncpg.Connection, upserts: list[MemberRow], deletes: list[tuple[str, str]]
    ) -> None:
        items: list[tuple[list[MemberRow], list[tuple[str, str]]]] = [([row], []) for row in upserts]
        items += [([], [pair]) for pair in deletes]
        for rows, pairs in items:
            try:
                await conn.execute(queries.WRITE_MEMBERS, *_columns(rows, 5), *_columns(pairs, 2))
            except asyncpg.PostgresError as exc:
                if isinstance(exc, TRANSIENT_ERRORS):
                    raise
                self.stats.rows_rejected += 1
                log.error(
                    "row_rejected",
                    row=rows[0] if rows else None,
                    delete=pairs[0] if pairs else None,
                    error=f"{type(exc).__name__}: {exc}",
                )

    def _read_channels(self, server_ids: set[str]) -> list[ChannelRow]:
        """The channel rows of these guilds from the source; a guild no longer seen keeps its rows."""
        rows: list[ChannelRow] = []
        for server_id in list(server_ids):
            found = self._source.channels(server_id)
            if found is None:
                server_ids.discard(server_id)
            else:
                rows.extend(found)
        return rows

    async def _write_channels(
        self, conn: asyncpg.Connection, server_ids: set[str], rows: list[ChannelRow]
    ) -> None:
        """Make the channel rows of these guilds equal ``rows`` in one statement (``relay`` untouched)."""
        try:
            await conn.execute(queries.WRITE_CHANNELS, *_columns(rows, 4), sorted(server_ids))
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            # Fail closed: the stored rows may be stale, so no chat of these guilds is relayed (unless an
            # operator set relay) until a later channel event writes them again.
            log.error(
                "channels_rejected",
                server_ids=sorted(server_ids),
                channels=len(rows),
                error=f"{type(exc).__name__}: {exc}",
            )
            await conn.execute(queries.CHANNELS_CLOSE, sorted(server_ids))

    async def _write_messages(self, conn: asyncpg.Connection, messages: list[ChatLine]) -> None:
        try:
            status = await conn.execute(queries.RELAY_MESSAGES, *_columns(messages, 5))
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            log.error("messages_rejected", error=f"{type(exc).__name__}: {exc}", messages=len(messages))
            return
        relayed = int(status.rsplit(" ", 1)[-1])  # "SELECT n": the messages the relay rule let through
        self.stats.messages_relayed += relayed
        self.stats.messages_withheld += len(messages) - relayed

    async def _apply_op(
        self, conn: asyncpg.Connection, server_id: str, op: _Op, snapshot: GuildSnapshot | None
    ) -> None:
        try:
            if op.kind == "sync":
                if snapshot is None:
                    log.info("full_sync_skipped_guild_gone", server_id=server_id)
                    return
                await self._full_sync(conn, server_id, snapshot)
            elif op.kind == "depart":
                await self._depart(conn, server_id)
            elif op.kind == "rename":
                await conn.execute(queries.SERVER_RENAME, server_id, op.name)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            log.error(
                "guild_write_rejected", server_id=server_id, op=op.kind, error=f"{type(exc).__name__}: {exc}"
            )

    async def _full_sync(self, conn: asyncpg.Connection, server_id: str, snapshot: GuildSnapshot) -> None:
        """Make the guild's rows equal the snapshot in one transaction, announcing only real changes."""
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute(queries.SERVER_UPSERT_SYNCED, server_id, server_name(snapshot.name, server_id))
            await conn.execute(queries.SYNC_CREATE_TEMP)
            await conn.copy_records_to_table(
                queries.SYNC_TEMP_TABLE,
                records=[row[1:] for row in snapshot.rows],
                columns=("user_id", "username", "status", "role_color"),
            )
            await conn.execute(f"ANALYZE {queries.SYNC_TEMP_TABLE}")
            changes = int(await conn.fetchval(queries.SYNC_COUNT_CHANGES, server_id))
            bulk = changes >= self.config.bulk_threshold
            if changes:
                if bulk:
                    await conn.execute(queries.BULK_MODE)
                await conn.execute(queries.SYNC_UPSERT, server_id)
                await conn.execute(queries.SYNC_DELETE_DEPARTED, server_id)
                if bulk:
                    await conn.execute(queries.NOTIFY_RESYNC, server_id)
        self.stats.full_syncs += 1
        log.info(
            "full_sync",
            server_id=server_id,
            members=len(snapshot.rows),
            changes=changes,
            bulk=bulk,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _depart(self, conn: asyncpg.Connection, server_id: str) -> None:
        async with conn.transaction():
            await conn.execute(queries.SERVER_DEPART, server_id)
            members = int(await conn.fetchval(queries.COUNT_SERVER_USERS, server_id))
            bulk = members >= self.config.bulk_threshold
            if bulk:
                await conn.execute(queries.BULK_MODE)
            await conn.execute(queries.USERS_DELETE_SERVER, server_id)
            if bulk:
                await conn.execute(queries.NOTIFY_RESYNC, server_id)
        log.info("guild_departed", server_id=server_id, members_deleted=members)

    async def _apply_reconcile(
        self, conn: asyncpg.Connection, present: set[str], ops: dict[str, _Op]
    ) -> None:
        for record in await conn.fetch(queries.SERVERS_PRESENT):
            server_id = record["server_id"]
            if server_id not in present and server_id not in ops and self._source.owns(server_id):
                log.info("guild_gone_while_away", server_id=server_id)
                await self._depart(conn, server_id)

    async def _log_rates(self) -> None:
        previous = (time.monotonic(), 0, 0, 0)
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            now = time.monotonic()
            stats = self.stats
            elapsed = max(now - previous[0], 1e-9)
            batches = stats.batches - previous[3]
            recent_commits = list(itertools.islice(reversed(stats.commit_latency), max(batches, 1)))
            log.info(
                "ingest_rates",
                events_per_s=round((stats.events - previous[1]) / elapsed, 1),
                rows_per_s=round((stats.rows_committed - previous[2]) / elapsed, 1),
                batches=batches,
                avg_batch=round((stats.rows_committed - previous[2]) / batches, 1) if batches else 0,
                commit_ms_p50=round(percentile(recent_commits, 0.5) * 1000, 2),
                commit_ms_p99=round(percentile(recent_commits, 0.99) * 1000, 2),
                pending_rows=self._n_pending,
                pending_messages=len(self._messages),
            )
            previous = (now, stats.events, stats.rows_committed, stats.batches)


def _columns(rows: list[Any], width: int) -> list[list[str]]:
    """Tuples -> ``width`` parallel lists, the shape ``unnest($1::text[], ...)`` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
