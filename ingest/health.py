"""The ingest's own HTTP port: ``/healthz`` (alive), ``/readyz`` (able to keep the database equal to
Discord) and ``/metrics`` (Prometheus text). Everything is read from the worker's parts at request time;
nothing is counted twice, so the hot paths keep plain integer counters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NotRequired, TypedDict

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ingest.gateway import IngestClient
from ingest.writer import COMMIT_BUCKETS_S, Heartbeat, Writer

log = structlog.get_logger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class ShardHealth(TypedDict):
    state: str  # "connecting" | "connected" | "ready" | "disconnected"
    latency_ms: float | None


class DatabaseHealth(TypedDict):
    ok: bool
    error: NotRequired[str | None]  # the rest only while the database fails
    permanent: NotRequired[bool]
    outage_s: NotRequired[float]
    failures_in_a_row: NotRequired[int]


class ReadinessBody(TypedDict):
    """The JSON ``/readyz`` answers."""

    ready: bool
    reasons: list[str]
    shards: dict[str, ShardHealth]
    database: DatabaseHealth
    pending_rows: int


@dataclass(frozen=True)
class Readiness:
    """Ready when every shard is READY, the database takes writes and the backlog is under its bound."""

    ready: bool
    body: ReadinessBody


def expected_shards(client: IngestClient) -> list[int] | None:
    """The shards this worker runs, or None while discord.py has not learnt the shard count yet."""
    if client.shard_ids is not None:
        return list(client.shard_ids)
    if client.shard_count is not None:
        return list(range(client.shard_count))
    return None


def readiness(client: IngestClient, writer: Writer, pending_rows_max: int) -> Readiness:
    """What ``/readyz`` answers, with every reason it is not ready."""
    reasons: list[str] = []
    shards: dict[str, ShardHealth] = {}
    expected = expected_shards(client)
    if client.refusal is not None:
        reasons.append(f"discord: refused: {client.refusal}; the ingest stays not ready until restarted")
    if client.identify_waiting is not None:
        reasons.append(f"gateway: {client.identify_waiting}")
    if expected is None:
        reasons.append("gateway: not connected yet")
    else:
        for shard_id in expected:
            state = client.shard_states.get(shard_id, "connecting")
            latency = _shard_latency(client, shard_id)
            shards[str(shard_id)] = {"state": state, "latency_ms": latency and round(latency * 1000, 1)}
            if state != "ready":
                reasons.append(f"gateway: shard {shard_id} is {state}")
    if not writer.running:
        reasons.append("writer: not running (the worker is stopping)")
    health = writer.health
    database: DatabaseHealth = {"ok": health.database_ok}
    if not health.database_ok:
        database["error"] = health.error
        database["permanent"] = health.permanent
        database["outage_s"] = round(health.outage_s, 1)
        database["failures_in_a_row"] = health.failures_in_a_row
        kind = "permanent error, needs an operator" if health.permanent else "failing"
        reasons.append(f"database: {kind}: {health.error or 'not connected yet'}")
    pending = writer.pending_rows
    if pending >= pending_rows_max:
        reasons.append(f"backlog: {pending} rows pending (bound {pending_rows_max})")
    body: ReadinessBody = {
        "ready": not reasons,
        "reasons": reasons,
        "shards": shards,
        "database": database,
        "pending_rows": pending,
    }
    return Readiness(not reasons, body)


def shard_heartbeat(client: IngestClient, instance: str, started_at: datetime) -> Heartbeat | None:
    """This worker's row per shard for ``ingest_heartbeat`` (None until the shards are known).

    Refused by Discord, the state is ``refused: <why>`` (on shard 0 when the shards were never known):
    ``dzone status`` shows it.
    """
    expected = expected_shards(client)
    if expected is None:
        if client.refusal is None:
            return None
        expected = [0]
    shards = []
    for shard_id in expected:
        latency = _shard_latency(client, shard_id)
        state = client.shard_states.get(shard_id, "connecting")
        if client.refusal is not None:
            state = f"refused: {client.refusal}"
        elif client.identify_waiting is not None and state != "ready":
            state = f"waiting: {client.identify_waiting}"
        shards.append((shard_id, state, None if latency is None else round(latency * 1000, 1)))
    return Heartbeat(instance, client.shard_count, started_at, shards)


def _shard_latency(client: IngestClient, shard_id: int) -> float | None:
    shard = client.get_shard(shard_id)
    if shard is None or shard.is_closed():
        return None
    latency = shard.latency
    return latency if math.isfinite(latency) else None


class IngestCollector(Collector):
    """Reads the worker's counters at scrape time (one registry per worker)."""

    def __init__(self, client: IngestClient, writer: Writer) -> None:
        self.client = client
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        stats, client, held = self.writer.stats, self.client, self.client.held_presences
        events = CounterMetricFamily(
            "dzone_ingest_events", "Events discord.py dispatched, by name", labels=["event"]
        )
        for event, count in sorted(client.event_counts.items()):
            events.add_metric([event], count)
        yield events
        for name, doc, value in (
            ("rows_committed", "Rows written (upserts and deletes)", stats.rows_committed),
            ("batches_committed", "Batches written", stats.batches),
            ("rows_rejected", "Rows the schema refused (dropped, logged)", stats.rows_rejected),
            ("full_syncs", "Full syncs of a guild", stats.full_syncs),
            ("resyncs", "Bulk changes announced as one resync", stats.resyncs),
            ("database_failures", "Failed attempts to write to the database", stats.failures),
            ("database_recoveries", "Outages the writer recovered from", stats.reconnects),
            ("messages_relayed", "Chat messages announced", stats.messages_relayed),
            ("messages_dropped", "Chat messages dropped beyond the queue bound", stats.messages_dropped),
            ("presences_kept", "Presences kept for members not cached yet", held.kept),
            ("presences_applied", "Kept presences put on their member", held.applied),
            ("presences_superseded", "Kept presences replaced by newer state", held.superseded),
            (
                "member_requests_rate_limited",
                "Member requests Discord refused with RATE_LIMITED",
                client.member_limits.refusals,
            ),
            (
                "member_requests_retry_after_seconds",
                "Seconds of RATE_LIMITED retry_after waited before asking for members again",
                client.member_limits.waited_s,
            ),
        ):
            yield CounterMetricFamily(f"dzone_ingest_{name}", doc, value=value)
        dropped = CounterMetricFamily(
            "dzone_ingest_presences_dropped", "Presences dropped on purpose, by reason", labels=["reason"]
        )
        for reason, count in sorted(held.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        health = self.writer.health
        yield CounterMetricFamily(
            "dzone_ingest_database_outage_seconds",
            "Seconds the database could not be written (finished and current outages)",
            value=stats.outage_s_total + health.outage_s,
        )
        yield GaugeMetricFamily(
            "dzone_ingest_database_up", "1 while the database takes writes", value=int(health.database_ok)
        )
        yield GaugeMetricFamily("dzone_ingest_pending_rows", "Rows waiting", value=self.writer.pending_rows)
        yield GaugeMetricFamily(
            "dzone_ingest_pending_messages", "Chat lines waiting", value=self.writer.pending_messages
        )
        yield GaugeMetricFamily("dzone_ingest_presences_held", "Presences kept right now", value=held.held)
        yield GaugeMetricFamily(
            "dzone_ingest_discord_refused",
            "1 when Discord refused the token or the intents for good (the ingest needs new settings)",
            value=int(client.refusal is not None),
        )
        yield GaugeMetricFamily(
            "dzone_ingest_identify_waiting",
            "1 while an IDENTIFY waits for Discord's session_start_limit to reset",
            value=int(client.identify_waiting is not None),
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*COMMIT_BUCKETS_S, math.inf), stats.commit_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "dzone_ingest_commit_seconds",
            "Time to commit one batch",
            buckets=buckets,
            sum_value=stats.commit_seconds_sum,
        )
        latency = GaugeMetricFamily(
            "dzone_ingest_gateway_latency_seconds", "Heartbeat round trip per shard", labels=["shard"]
        )
        ready = GaugeMetricFamily("dzone_ingest_shard_ready", "1 while the shard is READY", labels=["shard"])
        for shard_id in expected_shards(client) or []:
            seconds = _shard_latency(client, shard_id)
            if seconds is not None:
                latency.add_metric([str(shard_id)], seconds)
            ready.add_metric([str(shard_id)], int(client.shard_states.get(shard_id) == "ready"))
        yield latency
        yield ready


class HealthServer:
    """The aiohttp app on its own port; ``start()`` binds, ``stop()`` closes."""

    def __init__(
        self, client: IngestClient, writer: Writer, *, host: str, port: int, pending_rows_max: int
    ) -> None:
        self.client = client
        self.writer = writer
        self.host = host
        self.port = port
        self.pending_rows_max = pending_rows_max
        self.registry = CollectorRegistry()
        self.registry.register(IngestCollector(client, writer))
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=16)
        await site.start()
        log.info("ingest_http_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True, "uptime_s": round(time.monotonic() - self._started, 1)})

    async def _readyz(self, _request: web.Request) -> web.Response:
        state = readiness(self.client, self.writer, self.pending_rows_max)
        return web.json_response(state.body, status=200 if state.ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_METRICS}
        )
