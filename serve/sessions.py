"""The open sockets: each viewer's connection loop, its joins, and the write budget their snapshots share.

A viewer joins in one synchronous step (leave old set, write server-join, enter new set), so no event of
the new server can fall between its snapshot and its subscription, and none of the old one can follow.
The servers themselves (directory, per-server cores, reads) are serve/hub.py's; this module asks them
through :class:`Servers` and never imports the hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from serve import frames
from serve.addresses import viewer_address
from serve.admission import Admission
from serve.core import Grant, ServerCore
from serve.fanout import Fanout, write_frames
from serve.frames import ClientFrameError, ConnectRequest
from serve.limits import Pacer
from serve.metrics import ServeMetrics
from serve.providers import ProviderError
from serve.world import Directory, ServerInfo
from shared.settings import ServeSettings

log = structlog.get_logger(__name__)

JOIN_RETRY_S = 0.05  # how soon a join waiting for write budget is tried again (also on every drain)
# Unsent bytes per address are summed over the address's sockets at most this often; in between, joins
# charge what they write to the last sums (drains are not counted: conservative), and a join those sums
# refuse is decided again on exact ones. Summing per join made a storm of N joins from one address cost
# N x N (1,000 sockets behind one NAT or proxy).
TOTALS_MAX_AGE_S = 0.02


class Servers(Protocol):
    """What a session needs of the servers (serve/hub.py's Hub): where to resolve and read a join."""

    async def current_directory(self) -> Directory:
        """The server list to answer from now; raises ProviderError when it cannot be read."""
        ...

    def current_info(self, joined: ServerInfo) -> ServerInfo | None:
        """The row to decide a join on at the moment it is written (None: no longer joinable)."""
        ...

    async def live_state(self, key: str) -> ServerCore:
        """The server's state with current members; raises ProviderError when they cannot be read."""
        ...

    async def client_id(self, info: ServerInfo) -> str | None:
        """The OAuth client id a viewer of ``info`` is told in its server-join."""
        ...


class Session:
    """One socket: the server it views (None before its first join or after it lost access; how it was
    admitted there is the server's :class:`~serve.core.Grant`), its pacing, its join waiting for budget."""

    __slots__ = ("address", "pacer", "pending", "state", "ws")

    def __init__(self, ws: ServerConnection, address: str, pacer: Pacer) -> None:
        self.ws = ws
        self.address = address
        self.pacer = pacer
        self.state: ServerCore | None = None
        self.pending: PendingJoin | None = None  # a newer join replaces it


NO_GRANT = Grant()


class PendingJoin:
    """A join that passed its checks; its snapshot is taken when written, so it is never stale."""

    __slots__ = ("client_id", "grant", "info", "state")

    def __init__(self, state: ServerCore, info: ServerInfo, client_id: str | None, grant: Grant) -> None:
        self.state = state
        self.info = info
        self.client_id = client_id
        self.grant = grant


class Sessions:
    """Every open socket of the process by socket and by address, and the joins waiting for write budget."""

    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServeMetrics,
        servers: Servers,
        admission: Admission,
        fanout: Fanout,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.servers = servers
        self.admission = admission
        self.fanout = fanout
        self.by_socket: dict[ServerConnection, Session] = {}
        self.by_address: dict[str, set[Session]] = {}
        # Write budget: sockets whose transport is above its write limit (paused), per address the sockets
        # a write left holding unsent bytes (only those are summed: a storm of joins from one address
        # summed all its sockets), and sessions whose join waits for budget (retried when a socket of
        # their address drains, and on a short timer).
        self.paused: set[ServerConnection] = set()
        self.holders: dict[str, set[Session]] = {}
        self.deferred: set[Session] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._totals: UnsentTotals | None = None
        self._totals_at = 0.0
        self.on_close: Callable[[], None] = _nothing  # after a socket's session ended (the drain waits on it)

    def __len__(self) -> int:
        return len(self.by_socket)

    def __iter__(self) -> Iterator[ServerConnection]:
        return iter(self.by_socket)

    def sockets_of(self, address: str) -> int:
        """Open sockets of one client address (rule 20 refuses an upgrade beyond its share)."""
        return len(self.by_address.get(address, ()))

    # ------------------------------------------------------------ one socket

    async def handle(self, ws: ServerConnection) -> None:
        """One socket's life: server-list at once (rule 4), then answer each ``connect``."""
        session = self._open(ws)
        try:
            directory = await self.servers.current_directory()
            write_frames(ws, directory.list_wire, (directory.list_wire,))  # framed once per list
            while True:  # recv(), not ``async for``: no async generator kept per idle viewer
                message = await ws.recv()
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
            self._close(session)

    def _open(self, ws: ServerConnection) -> Session:
        address = viewer_address(ws, self.settings.trusted_proxies)
        # Nothing reads a viewer's handshake headers after this: emptied, they stop costing each idle
        # viewer about 3 KB (websockets' parser keeps the request object itself for the socket's life).
        for message in (ws.request, ws.response):
            if message is not None:
                message.headers.clear()
        session = self.by_socket[ws] = Session(ws, address, Pacer(self.settings.connects_per_minute))
        neighbours = self.by_address.get(address)
        if neighbours is None:
            neighbours = self.by_address[address] = set()
        neighbours.add(session)
        self.metrics.connections.inc()
        return session

    def _close(self, session: Session) -> None:
        ws = session.ws
        if session.state is not None:
            session.state.leave(ws)
        del self.by_socket[ws]
        self.paused.discard(ws)
        self.deferred.discard(session)
        _forget(self.by_address, session)
        _forget(self.holders, session)
        self.metrics.connections.dec()
        self.on_close()

    async def _send_error(self, ws: ServerConnection, message: str) -> None:
        self.metrics.join_errors.inc()
        await ws.send(frames.error_frame(message), text=True)

    # ------------------------------------------------------------ joins

    async def join(self, session: Session, request: ConnectRequest) -> None:
        """Resolve, authorise, read if needed, then switch the socket in one synchronous step (rules 5-9)."""
        try:
            directory = await self.servers.current_directory()
        except ProviderError:
            await self._send_error(session.ws, frames.ERR_UNAVAILABLE)
            return
        info = directory.resolve(request.server)
        if info is None:
            await self._send_error(session.ws, frames.ERR_NOT_FOUND)
            return
        grant = NO_GRANT
        if info.passworded:
            refusal, user_id = await self.admission.authorize(info, request, session.address)
            if refusal is not None:
                await self._send_error(session.ws, refusal)
                return
            grant = Grant(True, user_id)
        try:
            state = await self.servers.live_state(info.key)
        except ProviderError:
            await self._send_error(session.ws, frames.ERR_UNAVAILABLE)
            return
        client_id = await self.servers.client_id(info)
        if session.pending is not None:
            self.metrics.joins_replaced.inc()
        session.pending = PendingJoin(state, info, client_id, grant)
        self.write_join(session)

    def write_join(self, session: Session, totals: UnsentTotals | None = None) -> None:
        """Write the session's pending join if access and the write budget allow, in one synchronous step
        (switch servers, write the snapshot, subscribe) so no event slips between snapshot and subscription.
        Over budget it stays pending; access lost meanwhile answers the error instead."""
        pending = session.pending
        assert pending is not None
        state = pending.state
        # Access may have changed while the join waited: decide on the current row.
        current = self.servers.current_info(pending.info)
        if not state.qualifies(current, pending.grant):
            self._undefer(session)
            self.metrics.join_errors.inc()
            error = frames.text_frame(frames.error_frame(_refusal_after_wait(current, pending.grant)))
            write_frames(session.ws, error, (error,))
            return
        assert current is not None
        wire = state.join_wire(current, pending.client_id)
        allowed = (
            totals.allow(session, len(wire)) if totals is not None else self._fits_budget(session, len(wire))
        )
        if not allowed:
            if session not in self.deferred:
                self.metrics.joins_deferred.inc()
                self.deferred.add(session)
            self._schedule_retry()
            return
        self._undefer(session)
        # Frames queued this tick go to the viewers of before the switch: the snapshot already holds the
        # new server's, and none of the old server may follow it.
        self.fanout.flush_server(state)
        if session.state is not None:
            self.fanout.flush_server(session.state)
            session.state.leave(session.ws)
        write_frames(session.ws, wire, (wire,))  # the bytes built once per change, for every joiner
        state.enter(session.ws, pending.grant)
        session.state = state
        self.metrics.joins.inc()

    def rejoin(self, state: ServerCore, rejoins: list[ServerConnection], payloads: list[bytes]) -> None:
        """Send ``payloads`` to the viewers of ``state`` but ``rejoins``, which get the fresh server-join
        instead (it already holds what the payloads say): their world is out of room (rule 23). What was
        queued before goes to everyone first; the snapshot skips the write budget (it is one server's view)."""
        self.fanout.flush_server(state)
        state.viewers.difference_update(rejoins)
        try:
            for payload in payloads:
                self.fanout.send(state, payload)
            self.fanout.flush_server(state)
        finally:
            state.viewers.update(rejoins)
        wire = state.rejoin_wire()
        if wire is None:
            return
        for ws in rejoins:
            write_frames(ws, wire, (wire,))
            self.metrics.rejoins.inc()
            log.info(
                "viewer_rejoined",
                server=state.key,
                peer=self.by_socket[ws].address,
                users=len(state.view.shown),
            )

    def cut(self, ws: ServerConnection, reason: str) -> None:
        """Stop sending this socket its server (synchronously, before any later event) and tell it why.
        The d-zone client shows the alert and keeps its (now frozen) world: it does not reconnect-loop."""
        session = self.by_socket[ws]
        state = session.state
        assert state is not None
        self.fanout.flush_server(state)  # what was queued before the cut precedes it, nothing after
        state.leave(ws)
        session.state = None
        self.metrics.viewers_cut.inc()
        self.metrics.join_errors.inc()
        error = frames.text_frame(frames.error_frame(frames.ERR_ACCESS_LOST))
        write_frames(ws, error, (error,))
        log.info("viewer_access_lost", server=state.key, peer=session.address, reason=reason)

    # ------------------------------------------------------------ write budget

    def _undefer(self, session: Session) -> None:
        session.pending = None
        self.deferred.discard(session)

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
        self._retry_waiting(tuple(self.deferred))

    def _retry_waiting(self, waiting: tuple[Session, ...]) -> None:
        totals = UnsentTotals(self)  # summed once for the whole round, not once per waiting join
        for session in waiting:
            if session.pending is not None and session.ws in self.by_socket:
                self.write_join(session, totals)
            else:
                self.deferred.discard(session)

    def holding(self, ws: ServerConnection) -> None:
        """A write left unsent bytes in this socket's transport (called by the connection after each write)."""
        session = self.by_socket.get(ws)
        if session is not None:
            holders = self.holders.get(session.address)
            if holders is None:
                holders = self.holders[session.address] = set()
            holders.add(session)

    def unsent_of(self, address: str) -> int:
        """The bytes the sockets of ``address`` hold unsent; sockets found drained are forgotten."""
        holders = self.holders.get(address)
        if not holders:
            return 0
        total = 0
        for session in tuple(holders):
            unsent = _unsent(session.ws)
            if unsent:
                total += unsent
            else:
                holders.discard(session)
        if not holders:
            del self.holders[address]
        return total

    def writing_paused(self, ws: ServerConnection) -> None:
        """The socket's transport went above its write limit (called by the connection)."""
        self.paused.add(ws)

    def writing_resumed(self, ws: ServerConnection) -> None:
        """The socket drained below its low-water mark: joins of its address waiting for budget may go now."""
        self.paused.discard(ws)
        session = self.by_socket.get(ws)
        if session is None or not self.deferred:
            return
        self._retry_waiting(tuple(s for s in self.by_address[session.address] if s in self.deferred))

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()


class UnsentTotals:
    """Unsent bytes per address and for the process, summed lazily and charged as snapshots are written,
    to decide whether a snapshot fits the write budget (the one place for that rule)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self._process: int | None = None
        self._addresses: dict[str, int] = {}

    def allow(self, session: Session, size: int) -> bool:
        """Not while the socket is above its write buffer, nor when the snapshot would take its address or
        the process over their caps; when allowed, the totals are charged with ``size``."""
        sessions, s = self._sessions, self._sessions.settings
        if session.ws in sessions.paused or _unsent(session.ws) > s.write_buffer_bytes:
            return False
        address = self._addresses.get(session.address)
        if address is None:
            address = self._addresses[session.address] = sessions.unsent_of(session.address)
        if self._process is None:
            # Sockets below their write buffer hold less than it each; the big holders are the paused ones.
            self._process = sum(_unsent(ws) for ws in sessions.paused)
        if address + size > s.address_buffer_max_bytes or self._process + size > s.process_buffer_max_bytes:
            return False
        self._addresses[session.address] = address + size
        self._process += size
        return True


def _nothing() -> None:
    pass


def _forget(by_address: dict[str, set[Session]], session: Session) -> None:
    neighbours = by_address.get(session.address)
    if neighbours is not None:
        neighbours.discard(session)
        if not neighbours:
            del by_address[session.address]


def _unsent(ws: ServerConnection) -> int:
    """Bytes written to this socket that the kernel has not taken yet (held in our memory)."""
    transport = ws.transport
    return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0


def _refusal_after_wait(current: ServerInfo | None, grant: Grant) -> str:
    """The error for a join whose server changed under it while it waited (gone, or now passworded)."""
    if current is None:
        return frames.ERR_NOT_FOUND
    return frames.ERR_NOT_MEMBER if grant.authenticated else frames.ERR_AUTH_REQUIRED
