"""The coalescing writer: discord.py handlers hand it state, it commits the latest state in batches.

Handlers call :meth:`Writer.put` / :meth:`Writer.remove` (no I/O, a dict assignment). Pending state is
kept per (server, user), so the queue is bounded by the number of members, never by the event rate,
and the latest state wins. One task commits batches (``batch_max_rows`` rows or ``batch_max_delay_s``,
whichever first) on one connection, one statement per batch. When PostgreSQL is unreachable the batch
goes back into the pending state (unless something newer arrived), the task retries with backoff, and
after a long outage it asks for a full sync of every guild. Every database error is retried (only a
row the schema refuses is dropped, and counted); the first failure and then one line every
``failure_log_interval_s`` say why, and :attr:`Writer.health` tells the readiness check. Guild-level
work (full sync, rename, departure) runs before the live rows of the same flush, and supersedes older
pending rows of that guild. Channel rows (the relay rule's input) are re-read per guild and written
after the guild work and before the chat of the same flush, so a message is judged by its channel as
the gateway last described it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import asyncpg
import structlog

from ingest import queries
from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, clean_text, server_name
from shared.db import redacted
from shared.feed import MESSAGE_MAX_CHARS
from shared.settings import IngestSettings, default_of

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

# The server refused one row's data: that row is dropped (logged, counted), its neighbours written.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)

# Errors an operator has to fix (credentials, pg_hba, a missing database or schema, privileges): the
# writer keeps retrying, but reports them as permanent so the ingest shows as not ready.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # pg_hba reject, bad password (28P01 is a subclass)
    asyncpg.InvalidCatalogNameError,  # the database does not exist
    asyncpg.InvalidSchemaNameError,
    asyncpg.SyntaxOrAccessError,  # permission denied, a missing table or function (not migrated)
    asyncpg.ReadOnlySQLTransactionError,  # a standby, or default_transaction_read_only
)

# Upper bounds (seconds) of the commit latency histogram's buckets.
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


class Heartbeat(NamedTuple):
    """This process and the state of each of its shards, written to ``ingest_heartbeat``."""

    instance: str
    shard_count: int | None
    started_at: datetime
    shards: list[tuple[int, str, float | None]]  # shard id, state, gateway latency in ms


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

    batch_max_rows: int = default_of(IngestSettings, "batch_max_rows")
    batch_max_delay_s: float = default_of(IngestSettings, "batch_max_delay_ms") / 1000
    bulk_threshold: int = default_of(IngestSettings, "bulk_threshold")  # a sync this big announces a resync
    resync_after_outage_s: float = default_of(IngestSettings, "resync_after_outage_s")
    message_queue_max: int = default_of(IngestSettings, "message_queue_max")
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0  # also the longest wait before a recovered database is used again
    stats_interval_s: float = default_of(IngestSettings, "stats_interval_s")
    failure_log_interval_s: float = 10.0  # while the database keeps failing, one log line this often
    probe_interval_s: float = 5.0  # when idle, check the database this often (readiness stays true)
    heartbeat_interval_s: float = 5.0  # ingest_heartbeat refresh (0 = never)


@dataclass
class WriterStats:
    """Counters since start plus recent latency samples (seconds), for logs and the benchmark."""

    events: int = 0
    rows_committed: int = 0
    batches: int = 0
    full_syncs: int = 0
    resyncs: int = 0  # bulk changes announced as one resync instead of row events
    messages_relayed: int = 0
    messages_dropped: int = 0
    messages_withheld: int = 0  # not relayed: server or channel not relayed, or an unknown channel
    rows_rejected: int = 0
    reconnects: int = 0
    failures: int = 0  # failed attempts to write (or probe) since start
    outage_s_total: float = 0.0  # finished outages; Writer.health has the current one
    commit_buckets: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS_S) + 1))
    commit_seconds_sum: float = 0.0
    commit_latency: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    event_latency: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass(frozen=True)
class WriterHealth:
    """Whether the last database attempt worked, and if not why, since when, and whether it is permanent."""

    database_ok: bool
    error: str | None = None
    permanent: bool = False
    outage_s: float = 0.0
    failures_in_a_row: int = 0


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

    def __init__(
        self,
        database_url: str,
        source: GuildSource,
        config: WriterConfig | None = None,
        heartbeat: Callable[[], Heartbeat | None] | None = None,
    ) -> None:
        self._url = database_url
        self._heartbeat = heartbeat
        self._last_heartbeat = -math.inf
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
        self._failures_in_a_row = 0
        self._last_error: BaseException | None = None
        self._last_failure_log = 0.0
        self._connected_once = False
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
    def pending_messages(self) -> int:
        """Chat lines waiting to be announced."""
        return len(self._messages)

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

    @property
    def health(self) -> WriterHealth:
        """The database side of the readiness check."""
        if self._outage_started is None:
            return WriterHealth(database_ok=self._connected_once)
        exc = self._last_error
        return WriterHealth(
            database_ok=False,
            error=_describe(exc) if exc is not None else "not connected yet",
            permanent=isinstance(exc, PERMANENT_ERRORS),
            outage_s=time.monotonic() - self._outage_started,
            failures_in_a_row=self._failures_in_a_row,
        )

    @property
    def running(self) -> bool:
        """The writing task was started and has not ended."""
        return self._task is not None and not self._task.done()

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The writer's tasks, for the worker to watch: none of them may end while the worker runs."""
        return [task for task in (self._task, self._stats_task) if task is not None]

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
        if self._task is not None and self._task.done():
            flushed = self.idle()  # the task died earlier (the worker reports why): nothing more is written
        elif self._task is not None:
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_wait())
                if self.idle() and not self._stopping:
                    await self._attempt(self._probe)  # no work for a while: is the database still there?
                continue
            if not self._stopping and not self._ops and self._n_pending < self.config.batch_max_rows:
                # Batch window: a few ms or a full batch, whichever first.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.config.batch_max_delay_s)
            self._flushing = True
            try:
                await self._attempt(self._flush)
            finally:
                self._flushing = False
            async with self._committed:
                self._committed.notify_all()

    def _idle_wait(self) -> float:
        if self._outage_started is not None:  # failing: the last attempt already waited its backoff
            return 0.0
        return self.config.probe_interval_s

    async def _attempt(self, work: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        """Run ``work`` on the connection (opened if needed); on any error log, back off, and return."""
        conn: asyncpg.Connection | None = None
        try:
            conn = await self._connection()
            await work(conn)
            await self._maybe_heartbeat(conn)
        except Exception as exc:  # noqa: BLE001 - every error is retried; _failed logs it with its reason
            await self._failed(exc, conn)
            return
        self._succeeded()

    async def _maybe_heartbeat(self, conn: asyncpg.Connection) -> None:
        interval = self.config.heartbeat_interval_s
        if self._heartbeat is None or interval <= 0 or time.monotonic() - self._last_heartbeat < interval:
            return
        beat = self._heartbeat()
        if beat is None:  # the shards are not known yet
            return
        ids, states, latencies = (
            (list(column) for column in zip(*beat.shards, strict=True)) if beat.shards else ([], [], [])
        )
        await conn.execute(
            queries.HEARTBEAT,
            beat.instance,
            beat.shard_count,
            self._n_pending,
            beat.started_at,
            ids,
            states,
            latencies,
        )
        self._last_heartbeat = time.monotonic()

    async def _probe(self, conn: asyncpg.Connection) -> None:
        if await conn.fetchval(queries.PROBE_READ_ONLY):
            raise asyncpg.ReadOnlySQLTransactionError("the database is in recovery (read-only)")

    def _succeeded(self) -> None:
        self._connected_once = True
        if self._outage_started is None:
            return
        outage = time.monotonic() - self._outage_started
        self._outage_started = None
        self._failures_in_a_row = 0
        self._last_error = None
        self.stats.reconnects += 1
        self.stats.outage_s_total += outage
        log.info("database_recovered", outage_s=round(outage, 2), pending_rows=self._n_pending)
        if outage >= self.config.resync_after_outage_s:
            # Anything may have changed (an operator restore, a failover): re-read every guild.
            for server_id in self._source.server_ids():
                if server_id not in self._ops:
                    self._ops[server_id] = _Op("sync")
                self._channel_syncs.add(server_id)
            self._wake.set()

    async def _failed(self, exc: Exception, conn: asyncpg.Connection | None) -> None:
        """Keep the work (already put back), log the reason the first time and then periodically, back off."""
        now = time.monotonic()
        first = self._outage_started is None
        started = self._outage_started = now if self._outage_started is None else self._outage_started
        changed = type(exc) is not type(self._last_error)
        self._last_error = exc
        self._failures_in_a_row += 1
        self.stats.failures += 1
        server_answered = isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, TRANSIENT_ERRORS)
        if conn is not None and (conn.is_closed() or not server_answered):
            conn.terminate()  # lost, or in an unknown state: the next attempt opens a new one
            if self._conn is conn:
                self._conn = None
        delay = self._backoff_delay()
        if first or changed or now - self._last_failure_log >= self.config.failure_log_interval_s:
            self._last_failure_log = now
            fields: dict[str, Any] = {
                "error": _describe(exc),
                "permanent": isinstance(exc, PERMANENT_ERRORS),
                "outage_s": round(now - started, 2),
                "attempts": self._failures_in_a_row,
                "retry_in_s": round(delay, 2),
                "pending_rows": self._n_pending,
                "url": redacted(self._url),
            }
            if isinstance(exc, (asyncpg.PostgresError, *TRANSIENT_ERRORS, asyncpg.InterfaceError)):
                emit = log.error if fields["permanent"] else log.warning  # permanent: an operator must act
                emit("database_write_failed" if first else "database_still_failing", **fields)
            else:  # not the database's doing: a bug of ours, with its traceback
                log.error("writer_flush_failed", **fields, exc_info=exc)
        if self._stopping and self._failures_in_a_row > 1:
            delay = min(delay, self.config.backoff_initial_s)  # close() bounds the time left
        await asyncio.sleep(delay)

    def _backoff_delay(self) -> float:
        exponent = min(max(self._failures_in_a_row - 1, 0), 30)
        delay = min(self.config.backoff_initial_s * 2.0**exponent, self.config.backoff_max_s)
        return delay * random.uniform(0.8, 1.2)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        self._conn = await asyncpg.connect(
            self._url,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.command_timeout_s,
        )
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
        except ROW_ERRORS as exc:
            # A row the schema refuses must not sink its neighbours: write one by one, log the bad ones.
            log.error("batch_rejected", error=f"{type(exc).__name__}: {exc}", rows=len(stamps))
            await self._write_one_by_one(conn, upserts, deletes)
        finished = time.monotonic()
        self.stats.batches += 1
        self.stats.rows_committed += len(stamps)
        self.stats.batch_sizes.append(len(stamps))
        self.stats.commit_latency.append(finished - started)
        self.stats.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS_S, finished - started)] += 1
        self.stats.commit_seconds_sum += finished - started
        self.stats.event_latency.extend(finished - stamp for stamp in stamps)

    async def _write_one_by_one(
        self, conn: asyncpg.Connection, upserts: list[MemberRow], deletes: list[tuple[str, str]]
    ) -> None:
        items: list[tuple[list[MemberRow], list[tuple[str, str]]]] = [([row], []) for row in upserts]
        items += [([], [pair]) for pair in deletes]
        for rows, pairs in items:
            try:
                await conn.execute(queries.WRITE_MEMBERS, *_columns(rows, 5), *_columns(pairs, 2))
            except ROW_ERRORS as exc:
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

    async def _write_messages(self, conn: asyncpg.Connection, messages: list[ChatLine]) -> None:
        try:
            status = await conn.execute(queries.RELAY_MESSAGES, *_columns(messages, 5))
        except ROW_ERRORS as exc:
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
        except ROW_ERRORS as exc:
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
                    self.stats.resyncs += 1
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
                self.stats.resyncs += 1
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


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an error, with PostgreSQL's SQLSTATE when the server sent one."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text
