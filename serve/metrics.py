"""Prometheus metrics of one serve process (its own registry, so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("dzone_serve_connections", "Open WebSocket connections", registry=r)
        self.connect_requests = Counter(
            "dzone_serve_connect_requests", "Client frames read (connect or not)", registry=r
        )
        self.joins = Counter("dzone_serve_joins_total", "server-join frames sent", registry=r)
        self.rejoins = Counter(
            "dzone_serve_rejoins_total",
            "Fresh server-joins sent to viewers whose world was out of room (rule 23)",
            registry=r,
        )
        self.joins_deferred = Counter(
            "dzone_serve_joins_deferred", "Joins that waited for write budget", registry=r
        )
        self.joins_replaced = Counter(
            "dzone_serve_joins_replaced", "Waiting joins replaced by a newer connect", registry=r
        )
        self.join_errors = Counter("dzone_serve_errors_total", "error frames sent", registry=r)
        self.frames_sent = Counter(
            "dzone_serve_event_deliveries_total", "Event frames delivered to viewers", registry=r
        )
        self.queue_to_write = Histogram(
            "dzone_serve_notification_to_write_seconds",
            "From an event frame being queued (its notification handled) to its write to the viewers",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.coalesced_writes = Counter(
            "dzone_serve_coalesced_writes_total",
            "Socket writes carrying one server's frames of a tick",
            registry=r,
        )
        self.frames_per_write = Histogram(
            "dzone_serve_frames_per_write",
            "Frames joined into one write per viewer",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.flush_servers = Histogram(
            "dzone_serve_flush_servers",
            "Servers written per end-of-tick flush",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.notifications = Counter(
            "dzone_serve_notifications_total", "Change-feed notifications", registry=r
        )
        self.bad_notifications = Counter(
            "dzone_serve_bad_notifications_total", "Undecodable notifications", registry=r
        )
        self.listener_reconnects = Counter(
            "dzone_serve_listener_reconnects_total", "LISTEN reconnects", registry=r
        )
        self.listener_connected = Gauge(
            "dzone_serve_listener_connected",
            "1 while LISTEN is connected and its feed probe came back",
            registry=r,
        )
        self.probe_seconds = Gauge(
            "dzone_serve_listener_probe_seconds",
            "Last feed probe round trip: a NOTIFY from the pool back on the LISTEN connection",
            registry=r,
        )
        self.feed_probe_failures = Counter(
            "dzone_serve_feed_probe_failures_total",
            "Feed probes not back within DZONE_LISTENER_PROBE_TIMEOUT_S (the LISTEN connection is re-opened)",
            registry=r,
        )
        self.slow_viewers_dropped = Counter(
            "dzone_serve_slow_viewers_dropped_total", "Viewers dropped", registry=r
        )
        self.viewers_cut = Counter(
            "dzone_serve_viewers_access_lost_total", "Viewers cut off when their access changed", registry=r
        )
        self.refused = Counter("dzone_serve_upgrades_refused_total", "Upgrades refused by limits", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
