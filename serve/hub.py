"""The core of the serve: servers and members in memory, viewers per server, and the relay.

Data path: notification -> :meth:`Hub.on_feed_event` (sync, in commit order) -> update the server's
members -> encode the presence/message frame once -> queue it in :class:`serve.fanout.Fanout`, which writes
each viewer once at the end of the loop iteration.
A viewer joins in one synchronous step (leave old set, write server-join, enter new set), so no event of
the new server can fall between its snapshot and its subscription, and none of the old one can follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from serve import frames, providers
from serve.admission import Admission, ValidateCallback
from serve.core import Grant, Outcome, ServerCore, static_client_id
from serve.fanout import Fanout, write_frames
from serve.frames import ClientFrameError, ConnectRequest
from serve.limits import Pacer
from serve.metrics import ServeMetrics
from serve.oauth import DiscordIdentity
from serve.providers import ProviderError
from serve.sources import MemberSource, ServerSource, choose
from serve.world import Directory, ServerInfo, encode_join
from shared.feed import FeedEvent, ServerChanged
from shared.settings import ServeSettings

log = structlog.get_logger(__name__)

JOIN_RETRY_S = 0.05  # how soon a join waiting for write budget is tried again (also on every drain)
# Unsent bytes per address are summed over the address's sockets at most this often; in between, joins
# charge what they write to the last sums (drains are not counted: conservative), and a join those sums
# refuse is decided again on exact ones. Summing per join made a storm of N joins from one address cost
# N x N (1,000 sockets behind one NAT or proxy).
TOTALS_MAX_AGE_S = 0.02

ClientIdCallback = Callable[[str], Awaitable[str | None]]


@dataclass
class Callbacks:
    """The guide's registered callbacks; None means "use the PostgreSQL default"."""

    server_data: providers.ServerDataCallback | None = None
    user_data: providers.UserDataCallback | None = None
    validate_discord_user: ValidateCallback | None = None
    client_id: ClientIdCallback | None = None


@dataclass(eq=False, slots=True)
class Session:
    """One socket: the server it views (None before its first join or after it lost access), its pacing,
    and how it was admitted there: ``authenticated`` passed a passworded check, as Discord user ``user_id``
    (None when a registered validate callback decided)."""

    ws: ServerConnection
    address: str
    pacer: Pacer
    state: ServerCore | None = None
    authenticated: bool = False
    user_id: str | None = None
    pending: PendingJoin | None = None  # a join waiting for write budget (a newer one replaces it)


@dataclass(frozen=True, slots=True)
class PendingJoin:
    """A join that passed its checks; its snapshot is encoded when written, so it is never stale."""

    state: ServerCore
    info: ServerInfo
    client_id: str | None
    authenticated: bool
    user_id: str | None


@dataclass
class Health:
    """Why the process is not ready, by source (empty = ready as far as data goes)."""

    problems: dict[str, str] = field(default_factory=dict)


class Hub:
    """Owns the directory, the per-server states and the sessions of one serve process."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServeMetrics,
        callbacks: Callbacks,
        identity: DiscordIdentity,
        pool: asyncpg.Pool | None,
        sources: tuple[ServerSource, MemberSource] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.callbacks = callbacks
        self.identity = identity
        self.pool = pool
        self.server_source, self.member_source = sources or choose(
            callbacks.server_data, callbacks.user_data, pool, settings.provider_timeout_s
        )
        self.fanout = Fanout(metrics)
        self.admission = Admission(settings, identity, callbacks, self.is_member)
        self.directory: Directory | None = None
        self.states: dict[str, ServerCore] = {}
        self.sessions: dict[ServerConnection, Session] = {}
        self.health = Health()
        self._loading: dict[str, asyncio.Task[ServerCore]] = {}
        self._resyncing: dict[str, asyncio.Task[None]] = {}
        self._resync_again: set[str] = set()
        self._directory_task: asyncio.Task[Directory] | None = None
        # While the server list is read from the database: the server notifications that arrived, to
        # replay on top of the read (they are also applied at once, so access changes take effect now).
        self._server_events: list[ServerChanged] | None = None
        # Write budget: sockets whose transport is above its write limit (paused), sockets per address,
        # and sessions whose join waits for budget (retried on drain and on a short timer).
        self.paused: set[ServerConnection] = set()
        self.by_address: dict[str, set[Session]] = {}
        self._deferred: set[Session] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._totals: UnsentTotals | None = None
        self._totals_at = 0.0

    @property
    def servers_from_db(self) -> bool:
        """The server list is cached and kept current by the change feed (else read on every use)."""
        return self.server_source.live

    @property
    def users_from_db(self) -> bool:
        """Members are cached and kept current by the change feed (else read on every join)."""
        return self.member_source.live

    # ------------------------------------------------------------ directory

    async def refresh_directory(self) -> Directory:
        """Re-read the servers (single flight: concurrent callers share one read); keep the last good on failure."""
        if self._directory_task is not None:
            return await asyncio.shield(self._directory_task)
        self._directory_task = asyncio.create_task(self._read_directory())
        try:
            return await asyncio.shield(self._directory_task)
        finally:
            self._directory_task = None

    async def _read_directory(self) -> Directory:
        try:
            if self.servers_from_db:
                self._server_events = []
            servers = await self.server_source.servers()
        except ProviderError as exc:
            self.health.problems["servers"] = str(exc)
            log.error("server_list_read_failed", error=str(exc), keeping_last_good=self.directory is not None)
            if self.directory is None:
                raise
            return self.directory
        finally:
            arrived, self._server_events = self._server_events or [], None
        self.health.problems.pop("servers", None)
        directory = Directory(servers)
        for event in arrived:  # full rows, in commit order: replaying converges on the newest
            directory = directory.with_server(event.server_id, providers.feed_server(event))
        self.apply_directory(directory)
        return directory

    def apply_directory(self, new: Directory) -> None:
        """Switch to ``new``. Viewers who may no longer view their server lose it now (the one place access
        is re-decided); the others get the difference when hide_offline or the client id changed."""
        self.directory = new
        for key, state in self.states.items():
            self._emit(state, state.set_info(new.by_key.get(key)))

    # ------------------------------------------------------------ access

    def _emit(self, state: ServerCore, outcome: Outcome) -> None:
        """Carry out what the core decided: its cuts first, then its frames to the viewers left."""
        for viewer, reason in outcome.cuts:
            self._cut(self.sessions[viewer], reason)
        for frame in outcome.frames:
            self.fanout.send(state, frame)
        if outcome.resync:
            self.request_resync(state)

    def _cut(self, session: Session, reason: str) -> None:
        """Stop sending this socket its server (synchronously, before any later event) and tell it why.
        The d-zone client shows the alert and keeps its (now frozen) world: it does not reconnect-loop."""
        state = session.state
        assert state is not None
        self.fanout.flush_server(state)  # what was queued before the cut precedes it, nothing after
        state.leave(session.ws)
        session.state, session.authenticated, session.user_id = None, False, None
        self.metrics.viewers_cut.inc()
        self.metrics.join_errors.inc()
        broadcast((session.ws,), frames.error_frame(frames.ERR_ACCESS_LOST), text=True)
        log.info("viewer_access_lost", server=state.key, peer=session.address, reason=reason)

    def _info(self, key: str) -> ServerInfo | None:
        return self.directory.by_key.get(key) if self.directory else None

    # ------------------------------------------------------------ the change feed

    def on_feed_event(self, event: FeedEvent) -> None:
        """Apply one notification; runs synchronously in commit order (called by the listener)."""
        if isinstance(event, ServerChanged):
            if self.servers_from_db:
                self._on_server_changed(event)
            return
        if not self.users_from_db:
            return
        state = self.states.get(event.server_id)
        if state is None:
            return  # nobody has joined this server: nothing cached, nothing to send
        self._emit(state, state.apply(event))

    def _on_server_changed(self, event: ServerChanged) -> None:
        """Apply a server's new row at once: access is decided here, in commit order, not after a re-read."""
        if self._server_events is not None:
            self._server_events.append(event)  # a read is in flight: replay on top of its result too
        if self.directory is None:
            return
        info = providers.feed_server(event)
        if self.directory.by_key.get(event.server_id) == info:
            return  # e.g. only synced_at changed: nothing a viewer sees or access depends on
        self.apply_directory(self.directory.with_server(event.server_id, info))

    # ------------------------------------------------------------ reading members

    async def live_state(self, key: str) -> ServerCore:
        """The server's state, read on first use (DB) or on every join (callback, like d-back)."""
        state = self.states.get(key)
        if self.users_from_db and state is not None and state.live:
            return state
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self._loading[key] = task
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: str) -> ServerCore:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = ServerCore(
                key, self._info(key), self.settings.message_max_chars, self.settings.oauth_client_id
            )
        state.begin_read()  # from now on, events of this server wait for the read to finish
        try:
            roster = await self.member_source.members(key)
        except ProviderError as exc:
            self._emit(state, state.abandon_read())
            self.health.problems[f"members:{key}"] = str(exc)
            if state.live:
                log.error("member_read_failed", server=key, error=str(exc), keeping_last_good=True)
                return state
            del self.states[key]
            raise
        self.health.problems.pop(f"members:{key}", None)
        self._emit(state, state.finish_read(roster.shown, roster.hidden))
        return state

    def request_resync(self, state: ServerCore) -> None:
        """Re-read one server soon (coalesced: one read in flight, at most one more queued)."""
        if state.key in self._resyncing:
            self._resync_again.add(state.key)
            return
        task = asyncio.create_task(self._resync(state))
        self._resyncing[state.key] = task

    async def _resync(self, state: ServerCore) -> None:
        try:
            while True:
                self._resync_again.discard(state.key)
                await self._load(state.key)
                if state.key not in self._resync_again:
                    return
        except ProviderError as exc:
            log.error("resync_failed", server=state.key, error=str(exc))
        finally:
            self._resyncing.pop(state.key, None)

    async def resync_everything(self) -> None:
        """After (re)connecting the listener: re-read servers, then every cached server; raise if a read fails."""
        if self.servers_from_db:
            directory = await self.refresh_directory()
            if "servers" in self.health.problems:
                raise ProviderError(self.health.problems["servers"])
            del directory
        if not self.users_from_db:
            return
        live = [s for s in self.states.values() if s.live]
        await asyncio.gather(*(self._load(s.key) for s in live))
        failed = [k for k in self.health.problems if k.startswith("members:")]
        if failed:
            raise ProviderError(f"re-reading {len(failed)} server(s) failed")

    # ------------------------------------------------------------ sessions

    async def handle(self, ws: ServerConnection, address: str) -> None:
        """One socket's life: server-list at once (rule 4), then answer each ``connect``.

        ``address`` is the client's (serve/addresses.py): its sockets share the per-address caps."""
        session = Session(ws, address, Pacer(self.settings.connects_per_minute))
        self.sessions[ws] = session
        self.by_address.setdefault(address, set()).add(session)
        self.metrics.connections.inc()
        try:
            directory = self.directory
            if not self.servers_from_db or directory is None:
                directory = await self.refresh_directory()
            write_frames(ws, directory.list_wire, (directory.list_wire,))  # framed once per list
            async for message in ws:
                self.metrics.connect_requests.inc()
                delay = session.pacer.delay()
                if delay > 0:
                    await asyncio.sleep(delay)  # rule 15: slow this socket down, never close it
                try:
                    request = frames.parse_client_frame(message)
                except ClientFrameError as exc:
                    await self._send_error(ws, str(exc))
                    continue
                await self.join(session, request)
        except ConnectionClosed:
            pass
        except ProviderError as exc:
            log.error("socket_open_failed", error=str(exc))
        finally:
            if session.state is not None:
                session.state.leave(ws)
            del self.sessions[ws]
            self.paused.discard(ws)
            self._deferred.discard(session)
            neighbours = self.by_address[address]
            neighbours.discard(session)
            if not neighbours:
                del self.by_address[address]
            self.metrics.connections.dec()

    async def _send_error(self, ws: ServerConnection, message: str) -> None:
        self.metrics.join_errors.inc()
        await ws.send(frames.error_frame(message), text=True)

    async def join(self, session: Session, request: ConnectRequest) -> None:
        """Resolve, authorise, read if needed, then switch the socket in one synchronous step (rules 5-9)."""
        directory = self.directory
        if not self.servers_from_db or directory is None:
            try:
                directory = await self.refresh_directory()
            except ProviderError:
                await self._send_error(session.ws, frames.ERR_UNAVAILABLE)
                return
        info = directory.resolve(request.server)
        if info is None:
            await self._send_error(session.ws, frames.ERR_NOT_FOUND)
            return
        authenticated, user_id = False, None
        if info.passworded:
            refusal, user_id = await self.authorize(info, request, session.address)
            if refusal is not None:
                await self._send_error(session.ws, refusal)
                return
            authenticated = True
        try:
            state = await self.live_state(info.key)
        except ProviderError:
            await self._send_error(session.ws, frames.ERR_UNAVAILABLE)
            return
        client_id = await self.client_id(info)
        if session.pending is not None:
            self.metrics.joins_replaced.inc()
        session.pending = PendingJoin(state, info, client_id, authenticated, user_id)
        self._write_join(session)

    def _write_join(self, session: Session, totals: UnsentTotals | None = None) -> None:
        """Write the session's pending join if access and the write budget allow, in one synchronous step
        (switch servers, write the snapshot, subscribe) so no event slips between snapshot and subscription.
        Over budget it stays pending; access lost meanwhile answers the error instead."""
        pending = session.pending
        assert pending is not None
        state = pending.state
        # Access may have changed while the join waited: decide on the current row.
        current = self._info(pending.info.key) if self.servers_from_db else pending.info
        grant = Grant(pending.authenticated, pending.user_id)
        if not state.qualifies(current, grant):
            self._undefer(session)
            self.metrics.join_errors.inc()
            refusal = _refusal_after_wait(current, pending.authenticated)
            broadcast((session.ws,), frames.error_frame(refusal), text=True)
            return
        assert current is not None
        max_users = self.settings.snapshot_max_users
        if self.callbacks.client_id is not None:
            frame = encode_join(current, state.members, pending.client_id, max_users)
        else:
            frame = state.join_frame(current, pending.client_id, max_users)
        allowed = (
            totals.allow(session, len(frame))
            if totals is not None
            else self._fits_budget(session, len(frame))
        )
        if not allowed:
            if session not in self._deferred:
                self.metrics.joins_deferred.inc()
                self._deferred.add(session)
            self._schedule_retry()
            return
        self._undefer(session)
        # Frames queued this tick go to the viewers of before the switch: the snapshot already holds the
        # new server's, and none of the old server may follow it.
        self.fanout.flush_server(state)
        if session.state is not None:
            self.fanout.flush_server(session.state)
            session.state.leave(session.ws)
        broadcast((session.ws,), frame, text=True)
        state.enter(session.ws, grant)
        session.state, session.authenticated, session.user_id = state, pending.authenticated, pending.user_id
        self.metrics.joins.inc()

    # ------------------------------------------------------------ write budget

    def _undefer(self, session: Session) -> None:
        session.pending = None
        self._deferred.discard(session)

    def _fits_budget(self, session: Session, size: int) -> bool:
        """Decide on the recent sums; one they refuse is decided again on exact ones."""
        return self._recent_totals().allow(session, size) or self._recent_totals(fresh=True).allow(
            session, size
        )

    def _recent_totals(self, fresh: bool = False) -> UnsentTotals:
        now = asyncio.get_running_loop().time()
        if fresh or self._totals is None or now - self._totals_at > TOTALS_MAX_AGE_S:
            self._totals, self._totals_at = UnsentTotals(self), now
        return self._totals

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(JOIN_RETRY_S, self._retry_deferred)

    def _retry_deferred(self) -> None:
        self._retry = None
        totals = UnsentTotals(self)  # summed once for the whole round, not once per waiting join
        for session in tuple(self._deferred):
            if session.pending is not None and session.ws in self.sessions:
                self._write_join(session, totals)
            else:
                self._deferred.discard(session)

    def writing_paused(self, ws: ServerConnection) -> None:
        """The socket's transport went above its write limit (called by the connection)."""
        self.paused.add(ws)

    def writing_resumed(self, ws: ServerConnection) -> None:
        """The socket drained below its low-water mark: a join waiting for it may go now."""
        self.paused.discard(ws)
        session = self.sessions.get(ws)
        if session is not None and session.pending is not None:
            self._write_join(session)

    async def authorize(
        self, info: ServerInfo, request: ConnectRequest, address: str = "?"
    ) -> tuple[str | None, str | None]:
        """(None, Discord user id or None) if the socket may join passworded ``info`` (rule 17), else
        (the error text to send, None)."""
        return await self.admission.authorize(info, request, address)

    async def is_member(self, key: str, user_id: str) -> bool:
        known = await self.member_source.is_member(key, user_id)
        if known is not None:
            return known
        state = await self.live_state(key)
        return user_id in state.members

    def _static_client_id(self, info: ServerInfo) -> str | None:
        return static_client_id(info, self.settings.oauth_client_id)

    async def client_id(self, info: ServerInfo) -> str | None:
        if self.callbacks.client_id is None:
            return self._static_client_id(info)
        try:
            value = await providers.call_provider(
                "on_get_client_id", self.callbacks.client_id(info.key), self.settings.provider_timeout_s
            )
        except ProviderError as exc:
            log.error("client_id_failed", server=info.key, error=str(exc))
            return self._static_client_id(info)
        return str(value) if value else self._static_client_id(info)

    # ------------------------------------------------------------ the broadcast API (guide)

    def push_presence(
        self, key: str, uid: str, status: str, username: str | None, role_color: str | None, delete: bool
    ) -> bool:
        """broadcast_presence, applied by the server's core; False for an uncached server or a dropped presence."""
        state = self.states.get(key)
        if state is None:
            return False
        frame = state.push_presence(uid, status, username, role_color, delete)
        if frame is None:
            log.debug("presence_dropped_unknown_member", server=key, uid=uid)
            return False
        self.fanout.send(state, frame)
        return True

    def push_message(self, key: str, uid: str, text: str, channel: str) -> bool:
        state = self.states.get(key)
        if state is None or not state.viewers:
            return False
        text = frames.cap_message(str(text), self.settings.message_max_chars)
        if not text.strip():
            return False
        self.fanout.send(state, frames.message_frame(key, uid, text, str(channel)))
        return True

    def push_client_id(self, key: str, client_id: str) -> None:
        state = self.states.get(key)
        if state is not None:
            self.fanout.send(state, frames.client_id_frame(key, client_id))

    # ------------------------------------------------------------ housekeeping

    def viewers_of(self, key: str) -> Iterable[ServerConnection]:
        state = self.states.get(key)
        return tuple(state.viewers) if state else ()

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        tasks: list[asyncio.Task[Any]] = [*self._loading.values(), *self._resyncing.values()]
        if self._directory_task is not None:
            tasks.append(self._directory_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class UnsentTotals:
    """Unsent bytes per address and for the process, summed lazily and charged as snapshots are written,
    to decide whether a snapshot fits the write budget (serve/hub.py's one place for that rule)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._process: int | None = None
        self._addresses: dict[str, int] = {}

    def allow(self, session: Session, size: int) -> bool:
        """Not while the socket is above its write buffer, nor when the snapshot would take its address or
        the process over their caps; when allowed, the totals are charged with ``size``."""
        hub, s = self._hub, self._hub.settings
        if session.ws in hub.paused or _unsent(session.ws) > s.write_buffer_bytes:
            return False
        address = self._addresses.get(session.address)
        if address is None:
            neighbours = hub.by_address.get(session.address, ())
            address = self._addresses[session.address] = sum(_unsent(other.ws) for other in neighbours)
        if self._process is None:
            # Sockets below their write buffer hold less than it each; the big holders are the paused ones.
            self._process = sum(_unsent(ws) for ws in hub.paused)
        if address + size > s.address_buffer_max_bytes or self._process + size > s.process_buffer_max_bytes:
            return False
        self._addresses[session.address] = address + size
        self._process += size
        return True


def _unsent(ws: ServerConnection) -> int:
    """Bytes written to this socket that the kernel has not taken yet (held in our memory)."""
    transport = ws.transport
    return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0


def _refusal_after_wait(current: ServerInfo | None, authenticated: bool) -> str:
    """The error for a join whose server changed under it while it waited (gone, or now passworded)."""
    if current is None:
        return frames.ERR_NOT_FOUND
    return frames.ERR_NOT_MEMBER if authenticated else frames.ERR_AUTH_REQUIRED
