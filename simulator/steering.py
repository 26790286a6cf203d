"""What the control API and tests do to a running simulator: read the truth, inject changes and faults.

Kept apart from ``server.py`` (which binds the port and runs the scenario) so that ``control.py`` can
depend on it without the server and the control API importing each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from simulator.config import SimConfig
from simulator.engine import UNSET, Engine, Unset
from simulator.gateway import GatewayHub
from simulator.interactions import Interactions
from simulator.payloads import (
    AddedGuild,
    ChannelTruth,
    LimitsView,
    MemberTruth,
    MessagePayload,
    RoleTruth,
    SimState,
)
from simulator.rest import RestApi, RestFault
from simulator.scenario import WorldBuilder
from simulator.world import TEXT_CHANNEL, InvalidValueError, Overwrite

MAX_FAULT_SECONDS = 120.0  # longest delay/duplication window a fault route accepts


class Steering:
    """The simulated world with its gateway hub, engine and REST API, and the operations on them."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        config.validate()
        self.builder = WorldBuilder(config.seed)
        self.world = self.builder.build(config)
        self.hub = GatewayHub(config, self.world)
        self.engine = Engine(self.world, self.hub, self.builder)
        self.rest = RestApi(config, self.world, self.engine, self.hub.limits)
        self.interactions = Interactions(self.world, self.hub)  # application commands (issue 25)
        self._running = asyncio.Event()
        if not config.start_paused:
            self._running.set()
        self.changes_applied = 0

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Stop the random scenario (injected changes still work)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # -- truth --------------------------------------------------------------------------------------

    def state(self) -> SimState:
        """The truth: the same JSON as ``GET /_sim/state``."""
        return {**self.world.truth(), "paused": self.paused}

    def stats(self) -> dict[str, object]:
        return {
            **self.hub.stats(),
            "changes_applied": self.changes_applied,
            "paused": self.paused,
            "oauth_calls": self.oauth_calls,
            "limits": self.limits(),
        }

    # -- injection (each updates the truth and queues the event in one step) ------------------------

    async def set_presence(self, guild_id: int, user_id: int, status: str) -> None:
        self.engine.set_presence(guild_id, user_id, status)

    async def send_message(
        self, guild_id: int, channel_id: int, user_id: int, content: str
    ) -> MessagePayload:
        return self.engine.send_message(guild_id, channel_id, user_id, content)

    async def add_member(
        self,
        guild_id: int,
        *,
        user_id: int | None = None,
        username: str | None = None,
        global_name: str | None = None,
        nick: str | None = None,
        bot: bool = False,
        status: str | None = None,
        roles: Sequence[int] = (),
    ) -> MemberTruth:
        """A member joins; returns its truth entry (``user_id`` as a string)."""
        return self.engine.add_member(
            guild_id,
            user_id=user_id,
            username=username,
            global_name=global_name,
            nick=nick,
            bot=bot,
            status=status,
            roles=roles,
        )

    async def remove_member(self, guild_id: int, user_id: int) -> None:
        self.engine.remove_member(guild_id, user_id)

    async def update_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        nick: str | Unset | None = UNSET,
        roles: Sequence[int] | Unset = UNSET,
    ) -> MemberTruth:
        return self.engine.update_member(guild_id, user_id, nick=nick, roles=roles)

    async def set_role_color(self, guild_id: int, role_id: int, color: int) -> None:
        self.engine.set_role_color(guild_id, role_id, color)

    async def create_role(self, guild_id: int, name: str, color: int = 0) -> RoleTruth:
        """A new role (GUILD_ROLE_CREATE); its truth entry. Give it to members with ``update_member``."""
        return self.engine.create_role(guild_id, name, color)

    async def rename_role(self, guild_id: int, role_id: int, name: str) -> None:
        self.engine.rename_role(guild_id, role_id, name)

    async def delete_role(self, guild_id: int, role_id: int) -> None:
        self.engine.delete_role(guild_id, role_id)

    async def set_role_permissions(self, guild_id: int, role_id: int, permissions: int) -> None:
        self.engine.set_role_permissions(guild_id, role_id, permissions)

    async def update_channel(
        self,
        guild_id: int,
        channel_id: int,
        *,
        overwrites: Sequence[Overwrite] | Unset = UNSET,
        nsfw: bool | Unset = UNSET,
        name: str | Unset = UNSET,
    ) -> ChannelTruth:
        """Change a channel's permission overwrites / NSFW flag / name (CHANNEL_UPDATE); its truth entry."""
        return self.engine.update_channel(guild_id, channel_id, overwrites=overwrites, nsfw=nsfw, name=name)

    async def create_channel(
        self,
        guild_id: int,
        name: str,
        *,
        type: int = TEXT_CHANNEL,
        parent_id: int | None = None,
        overwrites: Sequence[Overwrite] = (),
        nsfw: bool = False,
    ) -> ChannelTruth:
        """A new channel, category or thread (CHANNEL_CREATE / THREAD_CREATE); its truth entry."""
        return self.engine.create_channel(
            guild_id, name, type=type, parent_id=parent_id, overwrites=overwrites, nsfw=nsfw
        )

    async def delete_channel(self, guild_id: int, channel_id: int) -> None:
        self.engine.delete_channel(guild_id, channel_id)

    async def rename_guild(self, guild_id: int, name: str) -> None:
        self.engine.rename_guild(guild_id, name)

    async def remove_guild(self, guild_id: int) -> None:
        self.engine.remove_guild(guild_id)

    def rate_limit_oauth(self, seconds: float) -> None:
        """``GET /users/@me`` with a Bearer token answers 429 + Retry-After for ``seconds``."""
        self.rest.rate_limit_oauth(seconds)

    @property
    def oauth_calls(self) -> int:
        """How many Bearer ``GET /users/@me`` calls the simulator has answered."""
        return self.rest.oauth_calls

    def issue_oauth_token(self, user_id: int | None = None) -> str:
        """A Bearer token whose ``GET /users/@me`` answers that user (None: a new user in no guild)."""
        return self.engine.issue_oauth_token(user_id)

    # -- faults -------------------------------------------------------------------------------------

    async def drop_connections(self) -> int:
        """Cut every gateway TCP connection without a close frame; sessions stay resumable."""
        return self.hub.drop_connections()

    async def send_reconnect(self) -> int:
        """Send op 7 RECONNECT on every identified connection."""
        return self.hub.send_reconnect()

    async def send_invalid_session(self, resumable: bool = False) -> int:
        """Send op 9 INVALID_SESSION; not resumable forgets the sessions (the client IDENTIFYs again)."""
        return self.hub.send_invalid_session(resumable)

    def stop_heartbeat_acks(self) -> int:
        """Stop answering heartbeats on the current connections (new ones are answered again)."""
        return self.hub.stop_heartbeat_acks()

    def resume_heartbeat_acks(self) -> int:
        return self.hub.resume_heartbeat_acks()

    def black_hole(self) -> int:
        """Current gateway connections stay open and send nothing, not even ACKs (zombie detection)."""
        return self.hub.black_hole()

    def set_heartbeat_interval(self, interval_ms: int) -> None:
        """The ``heartbeat_interval`` of the HELLO sent on new connections."""
        if (
            isinstance(interval_ms, bool)
            or not isinstance(interval_ms, int)
            or not 100 <= interval_ms <= 120_000
        ):
            raise InvalidValueError("interval_ms must be an integer 100..120000")
        self.hub.heartbeat_interval_ms = interval_ms

    async def add_guild(self, size: int) -> AddedGuild:
        """The bot is added to a new guild of ``size`` members (GUILD_CREATE live); answers its id."""
        return self.engine.add_guild(size)

    async def start_guild_outage(self, guild_id: int) -> None:
        """GUILD_DELETE ``unavailable: true``: an outage, not a removal; the guild keeps changing unseen."""
        self.engine.start_outage(guild_id)

    async def end_guild_outage(self, guild_id: int) -> None:
        """GUILD_CREATE ``unavailable: false`` with the guild as it is now."""
        self.engine.end_outage(guild_id)

    def end_all_sessions(self) -> int:
        """End every session and drop every connection: the clients' RESUME fails (INVALID_SESSION false)."""
        return self.hub.end_all_sessions()

    def queue_rest_faults(self, faults: Sequence[RestFault]) -> int:
        """The next bot REST requests get these errors (5xx, or 429 with Retry-After), in order."""
        return self.rest.queue_faults(list(faults))

    def set_chunk_faults(self, *, delay_s: float = 0.0, drop: int = 0) -> None:
        """Delay every GUILD_MEMBERS_CHUNK by ``delay_s``; never send the next ``drop`` chunks."""
        if not 0 <= delay_s <= MAX_FAULT_SECONDS or isinstance(drop, bool) or not 0 <= drop <= 1000:
            raise InvalidValueError(f"delay_s must be 0..{MAX_FAULT_SECONDS} and drop 0..1000")
        self.hub.chunk_delay_s = delay_s
        self.hub.chunks_to_drop = drop

    async def close_connections(self, code: int) -> int:
        """Close every identified connection with 4000 (resumable) or 4009 (the session is gone)."""
        try:
            return await self.hub.close_connections(code)
        except ValueError as exc:
            raise InvalidValueError(str(exc)) from None

    def set_limits(
        self,
        *,
        presence_threshold: int | None = None,
        member_request_window_s: float | None = None,
        session_start_total: int | None = None,
        session_start_remaining: int | None = None,
        session_start_reset_after_s: float | None = None,
        max_concurrency: int | None = None,
        identify_interval_s: float | None = None,
        token_reset: bool | None = None,
    ) -> LimitsView:
        """Switch Discord's limits while running (None keeps a value); answers them all as they are now.

        ``session_start_reset_after_s`` opens a budget window ending that many seconds from now.
        """
        limits = self.hub.limits
        budget = limits.session_start
        for name, value, low in (
            ("presence_threshold", presence_threshold, 1),
            ("session_start_total", session_start_total, 1),
            ("session_start_remaining", session_start_remaining, 0),
            ("max_concurrency", max_concurrency, 1),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InvalidValueError(f"{name} must be an integer >= {low}")
        for name, seconds in (
            ("member_request_window_s", member_request_window_s),
            ("session_start_reset_after_s", session_start_reset_after_s),
            ("identify_interval_s", identify_interval_s),
        ):
            if seconds is not None and (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not 0 <= seconds <= 86_400
            ):
                raise InvalidValueError(f"{name} must be a number of seconds in 0..86400")
        if presence_threshold is not None:
            limits.presence_threshold = presence_threshold
        if member_request_window_s is not None:
            limits.member_requests.window_s = float(member_request_window_s)
        if session_start_total is not None:
            budget.total = session_start_total
            budget.remaining = min(budget.remaining, session_start_total)
        if session_start_remaining is not None:
            budget.remaining = min(session_start_remaining, budget.total)
        if session_start_reset_after_s is not None:
            budget.reset_at = time.monotonic() + session_start_reset_after_s
        if max_concurrency is not None:
            budget.max_concurrency = max_concurrency
        if identify_interval_s is not None:
            limits.identify_pacing.interval_s = float(identify_interval_s)
        if token_reset is not None:
            limits.token_reset = token_reset
        return self.limits()

    def limits(self) -> LimitsView:
        """Discord's limits as they are now (``GET /_sim/stats`` shows them too)."""
        limits = self.hub.limits
        return {
            "presence_threshold": limits.presence_threshold,
            "member_request_window_s": limits.member_requests.window_s,
            "session_start_limit": limits.session_start.payload(time.monotonic()),
            "identify_interval_s": limits.identify_pacing.interval_s,
            "token_reset": limits.token_reset,
        }

    def delay_dispatches(self, seconds: float) -> int:
        """Current connections send nothing for ``seconds``, then everything, in order."""
        return self.hub.delay_dispatches(_fault_seconds(seconds))

    def duplicate_dispatches(self, seconds: float) -> int:
        """For ``seconds``, every dispatch to the current connections is sent twice."""
        return self.hub.duplicate_dispatches(_fault_seconds(seconds))


def _fault_seconds(seconds: float) -> float:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= MAX_FAULT_SECONDS
    ):
        raise InvalidValueError(f"seconds must be a number in (0, {MAX_FAULT_SECONDS}]")
    return float(seconds)
