"""The one dedicated LISTEN connection of a serve process, proven by a probe through the feed and re-opened.

Liveness: a termination callback (the server closed it) plus the feed probe (serve/feedprobe.py): a
NOTIFY committed from the pool every interval must come back here within a bound, else the feed is deaf
(a transaction pooler, a frozen backend, a dead TCP path) and the connection is re-opened. On loss:
reconnect with capped exponential backoff, LISTEN again *before* calling ``on_connected`` (which re-reads
everything cached), so no change can fall in between. Ready again once a probe has come back.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from serve.feedprobe import FeedProbe
from serve.metrics import ServeMetrics
from shared import db
from shared.feed import CHANNEL, FeedDecodeError, FeedEvent, decode
from shared.probe import ANSWER_CHANNEL, PROBE_CHANNEL, Answer, Ask, Probe, ProbeDecodeError, encode
from shared.probe import decode as decode_probe

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.1
DEAF_HINT = (
    "LISTEN hears nothing (its connection frozen or cut, or a transaction pooler in between:"
    " set DATABASE_DIRECT_URL, docs/postgres.md)"
)

# Commits a NOTIFY (channel, payload) from a connection other than the LISTEN one.
SendNotify = Callable[[str, str], Awaitable[object]]


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class FeedListener:
    """Calls ``on_event`` (synchronously, in commit order) for every decoded notification."""

    def __init__(
        self,
        url: str,
        on_event: Callable[[FeedEvent], None],
        on_connected: Callable[[], Awaitable[None]],
        send_notify: SendNotify,
        metrics: ServeMetrics,
        *,
        probe_interval_s: float,
        probe_timeout_s: float,
        backoff_max_s: float,
        pooler: db.Pooler = "none",
    ) -> None:
        self._url = url
        self._on_event = on_event
        self._on_connected = on_connected
        self._send_notify = send_notify
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._backoff_max_s = backoff_max_s
        self._pooler = pooler
        self.instance = uuid.uuid4().hex[:12]  # this serve on the probe channel
        self.connected = False  # LISTEN active, caches re-read, the feed probe came back
        self.last_error: str | None = "not connected yet"
        self.conn: asyncpg.Connection | None = None
        self.first_sync = asyncio.Event()
        self._probe: FeedProbe | None = None
        self._sends: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Until cancelled: connect, LISTEN, re-read, watch; on any failure back off and start over."""
        backoff = BACKOFF_START_S
        attempt = 0
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await db.connect(
                    self._url,
                    timeout=self._probe_timeout_s + 2,
                    application_name=db.APP_LISTENER,
                    pooler=self._pooler,
                )
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._notified)
                await conn.add_listener(PROBE_CHANNEL, self._probe_notified)
                self.conn = conn
                probe = self._probe = FeedProbe(self.instance, self._probe_interval_s, self._probe_timeout_s)
                await self._on_connected()
                self.first_sync.set()
                # until a probe is back, /readyz keeps saying why the last connection was given up
                waiting = "waiting for the first feed probe"
                self.last_error = f"{waiting}; before: {self.last_error}" if attempt else waiting
                if attempt:
                    log.info("listener_reconnected", attempts=attempt)
                backoff, attempt = BACKOFF_START_S, 0
                await self._watch(probe, lost)
            except asyncio.CancelledError:
                raise
            except db.DATABASE_ERRORS as exc:
                self._set_connected(False, db.describe_connect_error(exc))
            except Exception as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                log.exception("listener_cycle_failed")
            finally:
                self.conn = None
                self._probe = None
                for task in self._sends:
                    task.cancel()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            attempt += 1
            self._metrics.listener_reconnects.inc()
            delay = backoff * (0.5 + random.random() / 2)
            log.warning("listener_down", error=self.last_error, retry_in_s=round(delay, 2), attempt=attempt)
            await asyncio.sleep(delay)  # backoff between reconnect attempts, not synchronisation
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _watch(self, probe: FeedProbe, lost: asyncio.Event) -> None:
        """Send the probes as they fall due; return when the connection is terminated or the feed is deaf."""
        while True:
            now = time.monotonic()
            reason = probe.deaf(now)
            if reason is not None:
                self._metrics.feed_probe_failures.inc()
                reason = reason.replace("LISTEN hears nothing", DEAF_HINT)
                log.error("feed_deaf", reason=reason, proven_before=probe.proven, reopening=True)
                self._set_connected(False, reason)
                return
            due = probe.due(now)
            if due is not None:
                self._spawn(self._send_probe(probe, due))
            try:
                await asyncio.wait_for(lost.wait(), probe.wake_in(time.monotonic()))
            except TimeoutError:
                continue
            self._set_connected(False, "connection terminated")
            return

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_probe(self, probe: FeedProbe, message: Probe) -> None:
        try:
            await asyncio.wait_for(self._send_notify(PROBE_CHANNEL, encode(message)), self._probe_timeout_s)
        except db.DATABASE_ERRORS as exc:
            probe.send_failed(message, db.describe_connect_error(exc))

    async def _answer(self, message: Answer) -> None:
        try:
            await asyncio.wait_for(self._send_notify(ANSWER_CHANNEL, encode(message)), self._probe_timeout_s)
        except db.DATABASE_ERRORS as exc:
            log.warning("probe_answer_failed", error=db.describe_connect_error(exc))

    def _set_connected(self, up: bool, error: str | None) -> None:
        self.connected = up
        self.last_error = error
        self._metrics.listener_connected.set(1 if up else 0)

    def _probe_notified(self, conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = decode_probe(payload)
        except ProbeDecodeError as exc:
            self._metrics.bad_notifications.inc()
            log.warning("probe_payload_rejected", error=str(exc))
            return
        probe = self._probe
        if isinstance(message, Probe) and probe is not None:
            trip = probe.received(message, time.monotonic())
            if trip is not None:
                self._metrics.probe_seconds.set(trip)
                if not self.connected:
                    log.info("feed_proven", round_trip_ms=round(trip * 1000, 1))
                    self._set_connected(True, None)
        elif isinstance(message, Ask) and isinstance(conn, asyncpg.Connection):
            trip_ms = None if probe is None or probe.round_trip_s is None else probe.round_trip_s * 1000
            self._spawn(self._answer(Answer(message.nonce, self.instance, conn.get_server_pid(), trip_ms)))

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._metrics.notifications.inc()
        try:
            event = decode(payload)
        except FeedDecodeError as exc:
            self._metrics.bad_notifications.inc()
            log.warning("feed_payload_rejected", error=str(exc), payload=payload[:200])
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("feed_event_failed", event=type(event).__name__, server=event.server_id)
