"""``WebSocketServer``: d-back's Python API (same constructor, callbacks, broadcasts, start/stop) on our core.

Without registered callbacks the data comes from PostgreSQL (``DATABASE_URL``) and the change feed; a
registered callback replaces its default, so the d-back guide's provider examples run unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from serve import handover, http
from serve.addresses import viewer_address
from serve.hub import Callbacks, Hub
from serve.listener import FeedListener
from serve.metrics import ServeMetrics
from serve.oauth import DiscordIdentity
from serve.tls import CertificateError, CertificateFiles, ReloadingContext
from serve.viewers import ViewerReport
from shared import db, probe
from shared.errors import DzoneError
from shared.settings import ServeSettings, load

log = structlog.get_logger(__name__)

StaticCallback = Callable[[str], Awaitable[tuple[str, str] | None]]


class ServeError(DzoneError):
    """The server cannot start (bad configuration, database unreachable at start)."""


def _version() -> str:
    try:
        return package_version("dzone-pg")
    except PackageNotFoundError:
        return "0.0.0"


def _viewer_connection_class(
    grace_s: float, max_unsent: int, hub: Hub, on_drop: Callable[[], None]
) -> type[ServerConnection]:
    """A ServerConnection that drops a viewer whose write buffer stays above the limit for ``grace_s``, or
    at once when it holds more than ``max_unsent`` bytes, and tells the sessions when it pauses, drains, and
    when a write leaves bytes unsent (the write budget sums only such sockets).

    broadcast() never waits for a socket, so a viewer that stops reading only fills its own buffer;
    the transport tells us when it crosses ``write_limit`` (pause_writing) and when it drains again.
    """

    class ViewerConnection(ServerConnection):
        _slow_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            hub.sessions.writing_paused(self)
            self._slow_timer = self.loop.call_later(grace_s, self._drop_if_still_full)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._slow_timer is not None:
                self._slow_timer.cancel()
                self._slow_timer = None
            hub.sessions.writing_resumed(self)

        def send_data(self) -> None:
            super().send_data()
            unsent = self.transport.get_write_buffer_size()
            if unsent:
                hub.sessions.holding(self)
            if unsent > max_unsent and not self.transport.is_closing():
                log.info("viewer_over_memory_cap_dropped", peer=str(self.remote_address), unsent=unsent)
                self._drop()

        def _drop_if_still_full(self) -> None:
            if self.paused:
                log.info("slow_viewer_dropped", peer=str(self.remote_address), grace_s=grace_s)
                self._drop()

        def _drop(self) -> None:
            on_drop()
            self.transport.abort()

    return ViewerConnection


class WebSocketServer:
    """A d-back-compatible server: ``WebSocketServer(port=3000, host="localhost")`` as in the guide."""

    def __init__(
        self,
        port: int = 3000,
        host: str = "localhost",
        *,
        settings: ServeSettings | None = None,
        static_dir: str | Path | None = None,
    ) -> None:
        base = settings if settings is not None else load(ServeSettings)
        self.settings = base.model_copy(update={"port": port, "host": host})
        directory = static_dir if static_dir is not None else self.settings.static_dir
        self.static_dir: Path = Path(directory).resolve() if directory else http.PACKAGED_WEB
        self.metrics = ServeMetrics()
        self._callbacks = Callbacks()
        self._static_callback: StaticCallback | None = None
        self._server: Server | None = None
        self._listener: FeedListener | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._hub: Hub | None = None
        self._closed = asyncio.Event()
        self._closing = False
        self._draining = False
        self._drain_over = asyncio.Event()  # a second signal, or the last viewer left
        self._drain_task: asyncio.Task[None] | None = None
        self._handing_over: set[asyncio.Task[None]] = set()
        self._bound_port: int | None = None
        self.tls: ReloadingContext | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._viewer_report: ViewerReport | None = None
        self._viewer_report_task: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self.version = _version()

    # ------------------------------------------------------------ d-back callbacks

    def on_get_server_data(self, callback: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Replace the server list from discord_servers by ``await callback()`` -> {key: {id, name, ...}}."""
        self._callbacks.server_data = callback

    def on_get_user_data(self, callback: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        """Replace members from discord_users by ``await callback(guild_key)`` -> {uid: {uid, username, ...}}."""
        self._callbacks.user_data = callback

    def on_static_request(self, callback: StaticCallback) -> None:
        """``await callback(path)`` -> None to pass, or (content_type, file_path) to serve that file."""
        self._static_callback = callback

    def on_validate_discord_user(
        self, callback: Callable[[str, dict[str, Any], str], Awaitable[bool]]
    ) -> None:
        """Replace the Discord + membership check by ``await callback(token, user, guild_key)``."""
        self._callbacks.validate_discord_user = callback

    def on_get_client_id(self, callback: Callable[[str], Awaitable[str | None]]) -> None:
        """``await callback(guild_key)`` -> the OAuth client id sent as server-join ``clientId``."""
        self._callbacks.client_id = callback

    # ------------------------------------------------------------ d-back broadcasts

    async def broadcast_presence(
        self,
        server: str,
        uid: str,
        status: str,
        username: str | None = None,
        role_color: str | None = None,
        delete: bool = False,
    ) -> None:
        """Send a presence to the viewers of guild ``server``; name and colour come from the cache if omitted."""
        if self._hub is not None:
            self._hub.push_presence(str(server), str(uid), str(status), username, role_color, bool(delete))

    async def broadcast_message(self, server: str, uid: str, message: str, channel: str) -> None:
        """Send a chat bubble (capped, on one line) to the viewers of guild ``server``."""
        if self._hub is not None:
            self._hub.push_message(str(server), str(uid), message, channel)

    async def broadcast_client_id_update(self, server: str, client_id: str) -> None:
        if self._hub is not None:
            self._hub.push_client_id(str(server), str(client_id))

    @property
    def connections(self) -> set[ServerConnection]:
        """Every open socket, joined or not (as d-back's attribute)."""
        return set(self._hub.sessions) if self._hub else set()

    @property
    def port(self) -> int:
        """The bound port (useful with port=0); kept after a drain closed the listener."""
        return self._bound_port if self._bound_port is not None else self.settings.port

    # ------------------------------------------------------------ lifecycle

    @property
    def needs_database(self) -> bool:
        return self._callbacks.server_data is None or self._callbacks.user_data is None

    def _load_tls(self) -> None:
        """Read the certificate pair before anything else, so a bad one fails the start at once."""
        s = self.settings
        if not (s.tls_cert_file and s.tls_key_file):
            return
        files = CertificateFiles(
            Path(s.tls_cert_file),
            Path(s.tls_key_file),
            Path(s.tls_key_password_file) if s.tls_key_password_file else None,
            s.tls_min_version,
            s.tls_ciphers,
        )
        try:
            self.tls = ReloadingContext(files)
        except CertificateError as exc:
            raise ServeError(f"TLS: {exc}") from None

    async def open(self) -> None:
        """Connect, read the server list, start the relay and listen; returns once serving."""
        s = self.settings
        self._load_tls()
        pool = None
        if self.needs_database:
            if not s.database_url:
                raise ServeError("DATABASE_URL is not set (and not every data callback is registered)")
            if s.database_pooler == "transaction" and not s.database_direct_url:
                raise ServeError(
                    "DZONE_DATABASE_POOLER=transaction needs DATABASE_DIRECT_URL: LISTEN through a"
                    " transaction pooler hears nothing (docs/postgres.md)"
                )
            try:
                pool = await db.create_pool(
                    s.database_url,
                    min_size=1,
                    max_size=s.pool_max_size,
                    application_name=db.APP_SERVE,
                    pooler=s.database_pooler,
                )
            except db.DATABASE_ERRORS as exc:
                raise ServeError(
                    f"database unreachable at {db.redacted(s.database_url)}: {db.describe_connect_error(exc)}"
                ) from None
        identity = DiscordIdentity(
            s.discord_api_base,
            s.oauth_timeout_s,
            s.oauth_cache_s,
            failure_cache_s=s.oauth_failure_cache_s,
            calls_per_s=s.oauth_calls_per_s,
            calls_per_address_per_s=s.oauth_calls_per_ip_per_s,
        )
        hub = self._hub = Hub(s, self.metrics, self._callbacks, identity, pool)
        hub.sessions.on_close = self._socket_closed
        if s.database_url and (hub.servers_from_db or hub.users_from_db):
            assert pool is not None and s.session_url is not None  # the feed needs the database
            self._listener = FeedListener(
                s.session_url,
                hub.on_feed_event,
                hub.resync_everything,
                functools.partial(pool.execute, probe.NOTIFY),
                self.metrics,
                probe_interval_s=s.listener_probe_interval_s,
                probe_timeout_s=s.listener_probe_timeout_s,
                backoff_max_s=s.listener_backoff_max_s,
                pooler=s.session_pooler,
            )
            self._listener_task = asyncio.create_task(self._listener.run())
            # The first server list comes from the listener's first sync (LISTEN first, then read).
            try:
                async with asyncio.timeout(15):
                    await self._listener.first_sync.wait()
            except TimeoutError:
                await self.close()
                raise ServeError(f"could not start the change feed: {self._listener.last_error}") from None
        else:
            await hub.refresh_directory()
        self._server = await serve(
            hub.sessions.handle,
            s.host,
            s.port,
            process_request=self._process_request,
            compression=None,
            max_size=s.max_frame_bytes,
            max_queue=16,
            write_limit=s.write_buffer_bytes,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            origins=[*s.allowed_origins, None] if s.allowed_origins else None,  # type: ignore[list-item]
            create_connection=_viewer_connection_class(
                s.slow_viewer_grace_s, s.socket_buffer_max_bytes, hub, self.metrics.slow_viewers_dropped.inc
            ),
            server_header=None,
            ssl=self.tls.context if self.tls else None,
            select_subprotocol=handover.select_subprotocol,
            reuse_port=True,  # a replacement binds this port while we drain (docs/deploy.md, "Restarts")
        )
        self._bound_port = int(next(iter(self._server.sockets)).getsockname()[1])
        if self.tls is not None:
            self._tls_task = asyncio.create_task(self.tls.watch(s.tls_reload_interval_s))
        if pool is not None and s.viewer_report_interval_s > 0:
            self._viewer_report = ViewerReport(pool, hub.viewer_counts, s.viewer_report_interval_s, self.port)
            self._viewer_report_task = asyncio.create_task(self._viewer_report.run(), name="viewer-report")
        log.info(
            "serving",
            host=s.host,
            port=self.port,
            tls=self.tls is not None,
            static_dir=str(self.static_dir),
            database=bool(pool),
            callbacks=[k for k, v in vars(self._callbacks).items() if v],
        )

    async def close(self) -> None:
        """Stop accepting, close viewers with 1001, stop the relay, close the pool (idempotent)."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._drain_over.set()  # a drain in progress has nothing left to wait for
        if self._tls_task is not None:
            self._tls_task.cancel()
            await asyncio.gather(self._tls_task, return_exceptions=True)
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        if self._listener_task is not None:
            self._listener_task.cancel()
            await asyncio.gather(self._listener_task, return_exceptions=True)
        if self._viewer_report_task is not None:
            self._viewer_report_task.cancel()
            await asyncio.gather(self._viewer_report_task, return_exceptions=True)
            if self._viewer_report is not None:
                await self._viewer_report.forget()
        if self._hub is not None:
            await self._hub.close()
            await self._hub.identity.close()
            if self._hub.pool is not None:
                await self._hub.pool.close()
        self._closed.set()

    async def start(self) -> None:
        """Serve until :meth:`stop` (d-back's start blocks the same way)."""
        await self.open()
        await self._closed.wait()

    async def stop(self) -> None:
        await self.close()

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, seconds: float) -> None:
        """Stop accepting at once, serve open viewers up to ``seconds``, then close what is left with 1001.

        When a replacement answers on our port (SO_REUSEPORT) the viewers are closed with 1012 one by one
        over the rest of the drain, so they reconnect to it spread out. The wait ends early when the last
        viewer has left or :meth:`end_drain` is called.
        """
        if not self._draining and not self._closing:
            self._draining = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            if self._server is not None:
                self._server.server.close()  # the listener only: the kernel sends new sockets to a replacement
            viewers = len(self._hub.sessions) if self._hub else 0
            log.info("draining", seconds=seconds, viewers=viewers, port=self.port)
            if viewers == 0:
                self._drain_over.set()
            hand_over = asyncio.create_task(self._hand_over(deadline))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_over.wait(), seconds)
            hand_over.cancel()
            await asyncio.gather(hand_over, return_exceptions=True)
            log.info("drained", viewers_left=len(self._hub.sessions) if self._hub else 0)
        await self.close()

    async def _hand_over(self, deadline: float) -> None:
        """Close the viewers that come back (our reconnect script) with 1012 spread up to ``deadline``: from
        when a replacement answers on our port, else over the drain's last tenth (behind a balancer they
        come back through it, to another replica, not all at one instant). The others stay to the end."""
        loop = asyncio.get_running_loop()
        host = handover.probe_host(self.settings.host)
        tail = (deadline - loop.time()) * handover.TAIL_SHARE
        if not await handover.wait_for_replacement(host, self.port, self.tls is not None, deadline - tail):
            log.info("no_replacement", port=self.port)
        sockets = len(self._hub.sessions) if self._hub else 0
        viewers = [ws for ws in self._hub.sessions if handover.comes_back(ws)] if self._hub else []
        times = handover.spread(len(viewers), loop.time(), deadline)
        log.info(
            "handing_over",
            port=self.port,
            viewers=len(viewers),
            staying=sockets - len(viewers),
            over_s=round(deadline - loop.time(), 2),
        )
        for ws, at in zip(viewers, times, strict=True):
            await asyncio.sleep(max(at - loop.time(), 0))
            task = asyncio.create_task(ws.close(1012, "service restart"))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    def end_drain(self) -> None:
        """Stop waiting: close viewers now (with 1001); when already closing, drop what is left."""
        if self._closing and self._hub is not None:
            log.warning("closing_abruptly", sockets=len(self._hub.sessions))
            for ws in list(self._hub.sessions):
                ws.transport.abort()
        self._drain_over.set()

    def _on_signal(self) -> None:
        """First SIGTERM/SIGINT drains (``DZONE_DRAIN_S``); the next one ends the drain at once."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self.drain(self.settings.drain_s))
            self._drain_task.add_done_callback(lambda _task: self._closed.set())  # even if it failed
        else:
            self.end_drain()

    async def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, drain the open viewers, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        await self.open()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._closed.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._drain_task is not None:
            await self._drain_task  # a shutdown that failed ends the process with its error
        log.info("stopped")

    # ------------------------------------------------------------ readiness

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = the listener is connected (when there is one) and no data source is failing."""
        problems: dict[str, Any] = {}
        if self._draining or self._closing:
            problems["draining"] = "shutting down: send new viewers to another replica"
        if self._listener is not None and not self._listener.connected:
            problems["feed"] = self._listener.last_error or "disconnected"
        if self._hub is not None:
            problems.update(self._hub.health.problems)
        return (not problems, problems)

    # ------------------------------------------------------------ sockets and HTTP

    def _socket_closed(self) -> None:
        if self._draining and self._hub is not None and not self._hub.sessions:
            self._drain_over.set()

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if http.is_upgrade(request):
            return self._admit(connection)
        started = time.monotonic()
        resp = await self._http(request)
        log.debug(
            "http",
            method=request.method,
            path=request.path[:200],
            status=resp.status_code,
            ms=round((time.monotonic() - started) * 1000, 2),
        )
        return resp

    def _admit(self, connection: ServerConnection) -> Response | None:
        """Refuse an upgrade beyond the connection limits (before accepting: rule 20)."""
        assert self._hub is not None
        s = self.settings
        address = viewer_address(connection, s.trusted_proxies)
        if self._draining:
            self.metrics.refused.inc()
            return http.text_response(503, "Server is restarting\n", extra={"Retry-After": "5"})
        if self._hub.directory is None:
            self.metrics.refused.inc()
            return http.text_response(503, "Server list not loaded yet\n", extra={"Retry-After": "5"})
        if len(self._hub.sessions) >= s.max_connections:
            self.metrics.refused.inc()
            return http.text_response(503, "Too many connections\n", extra={"Retry-After": "30"})
        if self._hub.sessions.sockets_of(address) >= s.max_connections_per_ip:
            self.metrics.refused.inc()
            return http.text_response(
                429, "Too many connections from your address\n", extra={"Retry-After": "30"}
            )
        return None

    async def _http(self, request: Request) -> Response:
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return http.text_response(405, "Method Not Allowed\n", extra={"Allow": "GET, HEAD"})
        path = http.request_path(request)
        if self._static_callback is not None:
            answer = await self._static_callback(path)
            if answer is not None:
                content_type, file_path = answer
                target = Path(file_path)
                try:
                    is_file = await asyncio.to_thread(target.is_file)
                except (OSError, ValueError):  # the callback built a name the file system refuses
                    is_file = False
                if not is_file:
                    return http.not_found(head)
                return await http.file_response(target, head=head, content_type=content_type)
        if path == "/api/version":
            return http.json_response(200, {"version": self.version}, head=head)
        if path == "/healthz":
            return http.json_response(200, {"status": "alive"}, head=head)
        if path == "/readyz":
            ready, problems = self.readiness()
            return http.json_response(
                200 if ready else 503, {"ready": ready, "problems": problems}, head=head
            )
        if path == "/metrics":
            return http.response(
                200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8", head=head
            )
        if path == "/api/status":
            return http.json_response(200, self.status(), head=head)
        hosts_client = self.static_dir != http.PACKAGED_WEB
        if hosts_client and path == http.RECONNECT_PATH:
            return await http.file_response(http.RECONNECT_SCRIPT, head=head)
        found = await asyncio.to_thread(http.resolve_static, self.static_dir, path)
        if found is None:
            return http.not_found(head)
        if hosts_client and http.is_client_page(path):
            return await http.client_page_response(found, head=head)
        return await http.file_response(found, head=head)

    def status(self) -> dict[str, Any]:
        """A small public summary for the status page: the server-list's entries, with member and viewer
        counts only for servers anyone may join (a passworded server's audience is not public)."""
        hub = self._hub
        ready, _problems = self.readiness()
        servers: list[dict[str, Any]] = []
        if hub is not None and hub.directory is not None:
            for info in hub.directory.servers:
                entry = info.list_entry()
                if not info.passworded:
                    state = hub.states.get(info.key)
                    entry["viewers"] = len(state.viewers) if state else 0
                    entry["members"] = len(state.members) if state else None
                servers.append(entry)
        return {
            "version": self.version,
            "ready": ready,
            "draining": self.draining,
            "uptime_s": round(time.time() - self._started_at),
            "servers": servers,
        }
