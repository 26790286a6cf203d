"""The shell of the serve: the directory and the per-server cores, fed by the change feed and by reads,
whose cuts and frames it carries out.

Data path: notification -> :meth:`Hub.on_feed_event` (sync, in commit order) -> the server's core
(serve/core.py) updates its members and encodes the presence/message frame once -> :class:`serve.fanout.Fanout`
writes each viewer once at the end of the loop iteration. The sockets and their joins are serve/sessions.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from websockets.asyncio.server import ServerConnection

from serve import frames, providers
from serve.admission import Admission, ValidateCallback
from serve.core import Outcome, ServerCore, static_client_id
from serve.fanout import Fanout
from serve.metrics import ServeMetrics
from serve.oauth import DiscordIdentity
from serve.providers import ProviderError
from serve.sessions import Sessions
from serve.sources import MemberSource, ServerSource, choose
from serve.world import Directory, ServerInfo
from shared.feed import FeedEvent, ServerChanged
from shared.settings import ServeSettings

log = structlog.get_logger(__name__)

ClientIdCallback = Callable[[str], Awaitable[str | None]]


@dataclass
class Callbacks:
    """The guide's registered callbacks; None means "use the PostgreSQL default"."""

    server_data: providers.ServerDataCallback | None = None
    user_data: providers.UserDataCallback | None = None
    validate_discord_user: ValidateCallback | None = None
    client_id: ClientIdCallback | None = None


@dataclass
class Health:
    """Why the process is not ready, by source (empty = ready as far as data goes)."""

    problems: dict[str, str] = field(default_factory=dict)


class Hub:
    """Owns the directory, the per-server states and (in :attr:`sessions`) the sockets of one serve process."""

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
        self.sessions = Sessions(settings, metrics, self, self.admission, self.fanout)
        self.health = Health()
        self._loading: dict[str, asyncio.Task[ServerCore]] = {}
        self._resyncing: dict[str, asyncio.Task[None]] = {}
        self._resync_again: set[str] = set()
        self._directory_task: asyncio.Task[Directory] | None = None
        # While the server list is read from the database: the server notifications that arrived, to
        # replay on top of the read (they are also applied at once, so access changes take effect now).
        self._server_events: list[ServerChanged] | None = None

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
            self.sessions.cut(viewer, reason)
        rejoins = [viewer for viewer in outcome.rejoins if viewer in state.viewers]
        if rejoins:
            self.sessions.rejoin(state, rejoins, outcome.frames)
        else:
            for frame in outcome.frames:
                self.fanout.send(state, frame)
        if outcome.resync:
            self.request_resync(state)

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
                key,
                self.info(key),
                self.settings.message_max_chars,
                self.settings.oauth_client_id,
                self.settings.snapshot_max_users,
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

    # ------------------------------------------------------------ what sessions ask (serve/sessions.py)

    async def current_directory(self) -> Directory:
        """The cached server list when the feed keeps it current, else one read now (callbacks)."""
        directory = self.directory
        if not self.servers_from_db or directory is None:
            directory = await self.refresh_directory()
        return directory

    def current_info(self, joined: ServerInfo) -> ServerInfo | None:
        """The feed's newest row of the server ``joined`` names (callbacks: the row the join just read)."""
        return self.info(joined.key) if self.servers_from_db else joined

    def info(self, key: str) -> ServerInfo | None:
        return self.directory.by_key.get(key) if self.directory else None

    async def is_member(self, key: str, user_id: str) -> bool:
        """Membership for a passworded join: from memory when the feed keeps the server's members current
        (as of the last notification, the moment access is decided by), else asked of the source."""
        state = self.states.get(key)
        if self.users_from_db and state is not None and state.live:
            return state.member_now(user_id)
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
        outcome = state.push_presence(uid, status, username, role_color, delete)
        if not outcome.frames:
            log.debug("presence_not_shown", server=key, uid=uid)
            return False
        self._emit(state, outcome)
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

    def viewer_counts(self) -> dict[str, int]:
        """Open viewers per server right now (reported to serve_viewers for /dzone status)."""
        return {key: len(state.viewers) for key, state in self.states.items()}

    async def close(self) -> None:
        self.sessions.close()
        tasks: list[asyncio.Task[Any]] = [*self._loading.values(), *self._resyncing.values()]
        if self._directory_task is not None:
            tasks.append(self._directory_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
