"""The one dedicated LISTEN connection of a serve process, kept alive and re-opened.

Liveness: a termination callback (the server closed it) plus a periodic ``SELECT 1`` with a timeout (a
frozen or half-open connection). On loss: reconnect with capped exponential backoff, LISTEN again
*before* calling ``on_connected`` (which re-reads everything cached), so no change can fall in between.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from serve import queries
from serve.metrics import ServeMetrics
from shared import db
from shared.feed import CHANNEL, LISTENER_APPLICATION_NAME, FeedDecodeError, FeedEvent, decode

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.1


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class FeedListener:
    """Calls ``on_event`` (synchronously, in commit order) for every decoded notification."""

    def __init__(
        self,
        url: str,
        on_event: Callable[[FeedEvent], None],
        on_connected: Callable[[], Awaitable[None]],
        metrics: ServeMetrics,
        *,
        probe_interval_s: float,
        probe_timeout_s: float,
        backoff_max_s: float,
    ) -> None:
        self._url = url
        self._on_event = on_event
        self._on_connected = on_connected
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._backoff_max_s = backoff_max_s
        self.connected = False  # LISTEN active, caches re-read, last probe succeeded
        self.last_error: str | None = "not connected yet"
        self.conn: asyncpg.Connection | None = None
        self.first_sync = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: connect, LISTEN, re-read, watch; on any failure back off and start over."""
        backoff = BACKOFF_START_S
        attempt = 0
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await db.connect(
                    self._url, timeout=self._probe_timeout_s + 2, application_name=LISTENER_APPLICATION_NAME
                )
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._notified)
                self.conn = conn
                await self._on_connected()
                self._set_connected(True, None)
                self.first_sync.set()
                if attempt:
                    log.info("listener_reconnected", attempts=attempt)
                backoff, attempt = BACKOFF_START_S, 0
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                log.exception("listener_cycle_failed")
            finally:
                self.conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            attempt += 1
            self._metrics.listener_reconnects.inc()
            delay = backoff * (0.5 + random.random() / 2)
            log.warning("listener_down", error=self.last_error, retry_in_s=round(delay, 2), attempt=attempt)
            await asyncio.sleep(delay)  # backoff between reconnect attempts, not synchronisation
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is terminated or a probe fails or hangs."""
        while True:
            try:
                await asyncio.wait_for(lost.wait(), self._probe_interval_s)
            except TimeoutError:
                pass
            else:
                self._set_connected(False, "connection terminated")
                return
            started = time.monotonic()
            try:
                await asyncio.wait_for(conn.fetchval(queries.PROBE), self._probe_timeout_s)
            except TimeoutError:
                self._set_connected(False, f"probe timed out after {self._probe_timeout_s:g}s")
                return
            self._metrics.probe_seconds.set(time.monotonic() - started)

    def _set_connected(self, up: bool, error: str | None) -> None:
        self.connected = up
        self.last_error = error
        self._metrics.listener_connected.set(1 if up else 0)

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
