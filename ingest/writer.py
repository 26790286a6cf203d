"""The coalescing writer: discord.py handlers hand it state, it commits the latest state in batches.

Handlers call :meth:`Writer.put` / :meth:`Writer.remove` (no I/O, a dict assignment). The pending state
(ingest.pending) is kept per (server, user), so the queue is bounded by the number of members, never by
the event rate, and the latest state wins; the statements are ingest.store's. One task commits batches (``batch_max_rows`` rows or ``batch_max_delay_s``,
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
from typing import NamedTuple, Protocol

import asyncpg
import structlog

from ingest import store
from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, RoleRow
from ingest.pending import Batch, ChatLine, GuildOp, PendingWork, Taken
from ingest.store import ROW_ERRORS
from shared.db import (
    APP_INGEST,
    APP_INGEST_SYNC,
    DATABASE_ERRORS,
    POOLER_ERRORS,
    POOLER_HINT,
    Pooler,
    connect,
    redacted,
)
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

    def roles(self, server_id: str) -> list[RoleRow] | None:
        """Every role of the guild (id and name), or None when the guild is not seen."""


class Heartbeat(NamedTuple):
    """This process and the state of each of its shards, written to ``ingest_heartbeat``."""

    instance: str
    shard_count: int | None
    started_at: datetime
    shards: list[tuple[int, str, float | None]]  # shard id, state, gateway latency in ms


@dataclass(frozen=True)
class WriterConfig:
    """Batching, retry and bound settings of the writer."""

    batch_max_rows: int = default_of(IngestSettings, "batch_max_rows", int)
    batch_max_delay_s: float = default_of(IngestSettings, "batch_max_delay_ms", float) / 1000
    bulk_threshold: int = default_of(
        IngestSettings, "bulk_threshold", int
    )  # a sync this big announces a resync
    resync_after_outage_s: float = default_of(IngestSettings, "resync_after_outage_s", float)
    message_queue_max: int = default_of(IngestSettings, "message_queue_max", int)
    sync_connections: int = default_of(IngestSettings, "sync_connections", int)  # full syncs at once
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0  # also the longest wait before a recovered database is used again
    stats_interval_s: float = default_of(IngestSettings, "stats_interval_s", float)
    failure_log_interval_s: float = 10.0  # while the database keeps failing, one log line this often
    probe_interval_s: float = 5.0  # when idle, check the database this often (readiness stays true)
    heartbeat_interval_s: float = 5.0  # ingest_heartbeat refresh (0 = never)
    pooler: Pooler = "none"  # "transaction": asyncpg's statement cache off (shared/db.py)


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
        self._pending = PendingWork(self.config.batch_max_rows, self.config.message_queue_max)
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
        if self._pending.put(row, time.monotonic()):
            self._full.set()
        self.stats.events += 1
        self._wake.set()

    def remove(self, server_id: str, user_id: str) -> None:
        """The member left: delete its row (unless it comes back before the next flush)."""
        self._pending.remove(server_id, user_id, time.monotonic())
        self.stats.events += 1
        self._wake.set()

    def sync_guild(self, server_id: str) -> None:
        """Re-read the whole guild from the source at the next flush (upsert all, delete the departed)."""
        if self._closed:
            log.info("writer_closed_ignoring", work="sync", server_id=server_id)
            return
        self._pending.sync_guild(server_id)
        self._wake.set()

    def sync_roles(self, server_id: str) -> None:
        """Re-read the guild's roles at the next flush (a role was created, renamed or deleted)."""
        self._pending.role_syncs.add(server_id)
        self._wake.set()

    def sync_channels(self, server_id: str) -> None:
        """Re-read the guild's channels at the next flush: upsert every one, delete the vanished ones."""
        self._pending.channel_syncs.add(server_id)
        self._wake.set()

    def depart_guild(self, server_id: str) -> None:
        """The bot left the guild: mark the server departed and delete its members' rows."""
        self._pending.depart_guild(server_id)
        self._wake.set()

    def rename_guild(self, server_id: str, name: str) -> None:
        """Keep the server's name current (a pending full sync writes the name anyway)."""
        self._pending.rename_guild(server_id, name)
        self._wake.set()

    def reconcile(self, present_server_ids: Iterable[str]) -> None:
        """After startup: servers of our shards the database lists but the gateway does not are departed."""
        if self._closed:
            log.info("writer_closed_ignoring", work="reconcile")
            return
        self._pending.reconcile = set(present_server_ids)
        self._wake.set()

    def relay_message(
        self, server_id: str, user_id: str, channel_id: str, message_id: str, text: str
    ) -> None:
        """Announce a chat message (kept in order; the oldest are dropped beyond the bound)."""
        if not self._pending.relay(ChatLine(server_id, user_id, channel_id, message_id, text)):
            self.stats.messages_dropped = self._pending.messages_dropped
            if self.stats.messages_dropped % 1000 == 1:
                log.warning(
                    "message_queue_full",
                    dropped_total=self.stats.messages_dropped,
                    bound=self.config.message_queue_max,
                )
        self._wake.set()

    @property
    def pending_messages(self) -> int:
        """Chat lines waiting to be announced."""
        return len(self._pending.messages)

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be committed (after coalescing)."""
        return self._pending.row_count

    def idle(self) -> bool:
        """Nothing is waiting to be written."""
        return not self._flushing and self._pending.idle()

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
                    pending_rows=self.pending_rows,
                    pending_guild_ops=len(self._pending.ops),
                    pending_messages=self.pending_messages,
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
                pending_rows=self.pending_rows,
                guild_ops=len(self._pending.ops),
                messages=self.pending_messages,
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
            if (
                not self._stopping
                and not self._pending.ops
                and self.pending_rows < self.config.batch_max_rows
            ):
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
        await store.heartbeat(
            conn, beat.instance, beat.shard_count, self.pending_rows, beat.started_at, beat.shards
        )
        self._last_heartbeat = time.monotonic()

    async def _probe(self, conn: asyncpg.Connection) -> None:
        await store.probe(conn)

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
        log.info("database_recovered", outage_s=round(outage, 2), pending_rows=self.pending_rows)
        if outage >= self.config.resync_after_outage_s:
            # Anything may have changed (an operator restore, a failover): re-read every guild.
            for server_id in self._source.server_ids():
                if server_id not in self._pending.ops:
                    self._pending.ops[server_id] = GuildOp("sync")
                self._pending.channel_syncs.add(server_id)
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
            fields: dict[str, object] = {
                "error": _describe(exc),
                "permanent": isinstance(exc, PERMANENT_ERRORS),
                "outage_s": round(now - started, 2),
                "attempts": self._failures_in_a_row,
                "retry_in_s": round(delay, 2),
                "pending_rows": self.pending_rows,
                "url": redacted(self._url),
            }
            if isinstance(exc, (*DATABASE_ERRORS, *TRANSIENT_ERRORS)):
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
        self._conn = await self._open()
        return self._conn

    async def _open(self, application_name: str = APP_INGEST) -> asyncpg.Connection:
        return await connect(
            self._url,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.command_timeout_s,
            application_name=application_name,
            pooler=self.config.pooler,
        )

    async def _flush(self, conn: asyncpg.Connection) -> None:
        """Take everything due, write it; on an error put back what was not written."""
        taken = self._pending.take()
        try:
            await self._write(conn, taken)
        except BaseException:
            self._pending.restore(taken)
            self.stats.messages_dropped = self._pending.messages_dropped
            raise

    async def _write(self, conn: asyncpg.Connection, taken: Taken) -> None:
        """Write ``taken`` in order, clearing each part once written (what is left is put back)."""
        if taken.reconcile is not None:
            await self._apply_reconcile(conn, taken.reconcile, taken.ops)
            taken.reconcile = None
        await self._apply_ops(conn, taken)
        for server_id in list(taken.role_syncs):
            roles = self._source.roles(server_id)
            if roles is not None:
                await store.write_roles(conn, server_id, roles)
            taken.role_syncs.discard(server_id)
        if taken.channel_syncs:
            channels = self._read_channels(taken.channel_syncs)
            if taken.channel_syncs:
                await store.write_channels(conn, taken.channel_syncs, channels)
            taken.channel_syncs = set()
        if taken.batch:
            await self._write_batch(conn, taken.batch)
            taken.batch = []
        if taken.messages:
            relayed = await store.relay_messages(conn, taken.messages)
            if relayed is not None:
                self.stats.messages_relayed += relayed
                self.stats.messages_withheld += len(taken.messages) - relayed
            taken.messages = []

    async def _write_batch(self, conn: asyncpg.Connection, batch: Batch) -> None:
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
        self.stats.rows_rejected += await store.write_members(conn, upserts, deletes)
        finished = time.monotonic()
        self.stats.batches += 1
        self.stats.rows_committed += len(stamps)
        self.stats.batch_sizes.append(len(stamps))
        self.stats.commit_latency.append(finished - started)
        self.stats.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS_S, finished - started)] += 1
        self.stats.commit_seconds_sum += finished - started
        self.stats.event_latency.extend(finished - stamp for stamp in stamps)

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

    async def _apply_ops(self, conn: asyncpg.Connection, taken: Taken) -> None:
        """The guild ops: full syncs on up to ``sync_connections`` connections at once, the rest in order.

        A sync is mostly PostgreSQL's work (triggers, index inserts), so a second connection lets a
        second backend take the other core while this process builds and encodes the next snapshot.
        """
        syncs = deque(server_id for server_id, op in taken.ops.items() if op.kind == "sync")
        for server_id, op in taken.ops.items():
            if op.kind != "sync":
                await self._apply_op(conn, server_id, op)
                taken.done_ops.add(server_id)
        extra = min(self.config.sync_connections, len(syncs)) - 1
        if extra <= 0:
            await self._sync_lane(conn, syncs, taken)
            return
        # Opened per flush and closed after it: a burst of syncs is rare, an idle connection is not kept.
        lanes = [conn]
        results: list[BaseException | None] = []
        try:
            for _ in range(extra):
                lanes.append(await self._open(APP_INGEST_SYNC))
            results = await asyncio.gather(
                *(self._sync_lane(lane, syncs, taken) for lane in lanes), return_exceptions=True
            )
        finally:
            for lane, result in itertools.zip_longest(lanes[1:], results[1:]):
                if result is None and len(results) == len(lanes):
                    await lane.close(timeout=self.config.connect_timeout_s)
                else:
                    lane.terminate()  # failed, or the flush was cancelled: its state is unknown
        for result in results:
            if result is not None:
                raise result  # the first lane's error; syncs not done are put back by _flush

    async def _sync_lane(self, conn: asyncpg.Connection, syncs: deque[str], taken: Taken) -> None:
        """Run full syncs from the shared queue on one connection until it is empty or a lane failed."""
        while syncs and not taken.failed:
            server_id = syncs.popleft()
            try:
                await self._apply_op(conn, server_id, taken.ops[server_id])
            except BaseException:
                taken.failed = True  # the other lanes finish their guild and stop
                raise
            taken.done_ops.add(server_id)

    async def _apply_op(self, conn: asyncpg.Connection, server_id: str, op: GuildOp) -> None:
        try:
            if op.kind == "sync":
                # Read now, one guild per connection: only that many guilds' rows exist as lists at once.
                snapshot = self._source.snapshot(server_id)
                if snapshot is None:
                    log.info("full_sync_skipped_guild_gone", server_id=server_id)
                    return
                await self._full_sync(conn, server_id, snapshot)
            elif op.kind == "depart":
                await self._depart(conn, server_id)
            elif op.kind == "rename":
                await store.rename(conn, server_id, op.name)
        except ROW_ERRORS as exc:
            log.error(
                "guild_write_rejected", server_id=server_id, op=op.kind, error=f"{type(exc).__name__}: {exc}"
            )

    async def _full_sync(self, conn: asyncpg.Connection, server_id: str, snapshot: GuildSnapshot) -> None:
        """Make the guild's rows equal the snapshot in one transaction, announcing only real changes."""
        started = time.monotonic()
        result = await store.full_sync(
            conn,
            server_id,
            snapshot.name,
            snapshot.rows,
            self.config.bulk_threshold,
            self._source.roles(server_id),
        )
        self.stats.full_syncs += 1
        self.stats.resyncs += result.bulk
        log.info(
            "full_sync",
            server_id=server_id,
            members=len(snapshot.rows),
            changes=result.changes,
            bulk=result.bulk,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _apply_reconcile(
        self, conn: asyncpg.Connection, present: set[str], ops: dict[str, GuildOp]
    ) -> None:
        for server_id in await store.present_servers(conn):
            if server_id not in present and server_id not in ops and self._source.owns(server_id):
                log.info("guild_gone_while_away", server_id=server_id)
                await self._depart(conn, server_id)

    async def _depart(self, conn: asyncpg.Connection, server_id: str) -> None:
        result = await store.depart(conn, server_id, self.config.bulk_threshold)
        self.stats.resyncs += result.bulk
        log.info("guild_departed", server_id=server_id, members_deleted=result.changes)

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
                pending_rows=self.pending_rows,
                pending_messages=self.pending_messages,
            )
            previous = (now, stats.events, stats.rows_committed, stats.batches)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an error, with PostgreSQL's SQLSTATE when the server sent one."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, POOLER_ERRORS):
        text += f" ({POOLER_HINT})"
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text
