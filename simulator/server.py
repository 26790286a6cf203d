"""The in-process simulator: one aiohttp server (REST, gateway, control API) plus the scenario task.

async with Simulator(SimConfig(guild_sizes=[3, 50], seed=1)) as sim:
    sim.point_discord_py()  # or use sim.api_base / sim.gateway_url
    ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from simulator.config import SimConfig
from simulator.control import ControlApi
from simulator.discordpy import point_discord_py_at
from simulator.engine import UNSET, Engine
from simulator.gateway import GatewayHub
from simulator.rest import RestApi, RestFault
from simulator.scenario import (
    MemberJoin,
    MemberLeave,
    MessagePost,
    NickChange,
    PresenceChange,
    Traffic,
    WorldBuilder,
)
from simulator.world import TEXT_CHANNEL, InvalidValueError, Overwrite, SimulatorError

log = structlog.get_logger(__name__)

TICK_S = 0.01  # scenario granularity; rates are kept by drawing Poisson counts for the elapsed time
MAX_TICK_S = 0.25  # after a stall, do not burst more than this much simulated time at once
MAX_CHANGES_PER_TICK = 2_000  # keeps the loop responsive and backpressure effective at extreme rates
HOUSEKEEPING_S = 5.0
MAX_FAULT_SECONDS = 120.0  # longest delay/duplication window a fault route accepts


class Simulator:
    """A local Discord on one port; an async context manager that binds, runs and tears everything down."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config = config or SimConfig()
        config.validate()
        self.builder = WorldBuilder(config.seed)
        self.world = self.builder.build(config)
        self.hub = GatewayHub(config, self.world)
        self.engine = Engine(self.world, self.hub, self.builder)
        self.traffic = Traffic(config, self.world, self.builder)
        self.rest = RestApi(config, self.world, self.engine)
        self._running = asyncio.Event()
        if not config.start_paused:
            self._running.set()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.changes_applied = 0

    # -- URLs ---------------------------------------------------------------------------------------

    @property
    def _authority(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://{self._authority}"

    @property
    def api_base(self) -> str:
        """What the ingest reads from DZONE_DISCORD_API_BASE."""
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What the ingest reads from DZONE_DISCORD_GATEWAY_URL."""
        return f"ws://{self._authority}/gateway"

    @property
    def control_base(self) -> str:
        return f"{self.http_base}/_sim"

    def point_discord_py(self) -> None:
        """Point this process's discord.py at this simulator (process-wide class attributes)."""
        point_discord_py_at(self.api_base, self.gateway_url)

    # -- lifecycle ----------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self.rest.fault_middleware])
        app.add_routes(
            [
                web.get("/gateway", self.hub.handle),
                web.get("/gateway/resume", self.hub.handle),
                *ControlApi(self).routes(),
                *self.rest.routes(),
            ]
        )
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self.rest.gateway_url = self.gateway_url
        self.hub.resume_gateway_url = f"ws://{self._authority}/gateway/resume"
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="sim-housekeeping"))
        cfg = self.config
        if cfg.presence_rate or cfg.message_rate or cfg.churn:
            self._tasks.append(asyncio.create_task(self._run_traffic(), name="sim-traffic"))
        log.info("simulator_started", http=self.http_base, guilds=len(self.world.guilds))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for connection in list(self.hub.connections):
            with contextlib.suppress(ConnectionError):
                await connection.close(1001, "simulator shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- scenario -----------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """Stop the random scenario (injected changes still work)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def _run_traffic(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(TICK_S)
            if not self._running.is_set():
                await self._running.wait()
                last = loop.time()
                continue
            await self.hub.wait_writable()
            now = loop.time()
            elapsed, last = min(now - last, MAX_TICK_S), now
            cfg = self.config
            total_rate = cfg.presence_rate + cfg.message_rate + cfg.churn
            # beyond what one tick may carry, the configured rate is not reached: the clients set the pace
            elapsed = min(elapsed, MAX_CHANGES_PER_TICK / total_rate)
            for change in self.traffic.tick(elapsed):
                if not self._running.is_set():
                    break
                self._apply(change)

    def _apply(self, change: Any) -> None:
        engine = self.engine
        try:
            match change:
                case PresenceChange(guild_id, user_id, status):
                    engine.set_presence(guild_id, user_id, status)
                case MessagePost(guild_id, channel_id, user_id, content):
                    engine.send_message(guild_id, channel_id, user_id, content)
                case MemberJoin(guild_id):
                    engine.add_member(guild_id)
                case MemberLeave(guild_id, user_id):
                    engine.remove_member(guild_id, user_id)
                case NickChange(guild_id, user_id, nick):
                    engine.update_member(guild_id, user_id, nick=nick)
        except SimulatorError as exc:
            # a change drawn for a member a previous change of the same tick removed
            log.debug("scenario_change_skipped", change=repr(change), reason=str(exc))
            return
        self.changes_applied += 1

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.hub.expire_sessions()
            for connection in list(self.hub.connections):
                if len(connection.queue) > self.config.outbound_limit:
                    log.warning("gateway_connection_too_slow", queued=len(connection.queue))
                    connection.abort()

    # -- truth --------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The truth: the same JSON as ``GET /_sim/state``."""
        return {**self.world.truth(), "paused": self.paused}

    def stats(self) -> dict[str, Any]:
        return {
            **self.hub.stats(),
            "changes_applied": self.changes_applied,
            "paused": self.paused,
            "oauth_calls": self.oauth_calls,
        }

    # -- injection (each updates the truth and queues the event in one step) ------------------------

    async def set_presence(self, guild_id: int, user_id: int, status: str) -> None:
        self.engine.set_presence(guild_id, user_id, status)

    async def send_message(
        self, guild_id: int, channel_id: int, user_id: int, content: str
    ) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
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
        self, guild_id: int, user_id: int, *, nick: str | None = UNSET, roles: Sequence[int] = UNSET
    ) -> dict[str, Any]:
        return self.engine.update_member(guild_id, user_id, nick=nick, roles=roles)

    async def set_role_color(self, guild_id: int, role_id: int, color: int) -> None:
        self.engine.set_role_color(guild_id, role_id, color)

    async def set_role_permissions(self, guild_id: int, role_id: int, permissions: int) -> None:
        self.engine.set_role_permissions(guild_id, role_id, permissions)

    async def update_channel(
        self,
        guild_id: int,
        channel_id: int,
        *,
        overwrites: Sequence[Overwrite] = UNSET,
        nsfw: bool = UNSET,
        name: str = UNSET,
    ) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
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

    async def add_guild(self, size: int) -> dict[str, Any]:
        """The bot is added to a new guild of ``size`` members (GUILD_CREATE live); answers its id."""
        return self.engine.add_guild(size)

    async def start_guild_outage(self, guild_id: int) -> None:
        """GUILD_DELETE ``unavailable: true``: an outage, not a removal; the guild keeps changing unseen."""
        self.engine.start_outage(guild_id)

    async def end_guild_outage(self, guild_id: int) -> None:
        """GUILD_CREATE ``unavailable: false`` with the guild as it is now."""
        self.engine.end_outage(guild_id)

    def expire_sessions(self) -> int:
        """End every session and drop every connection: the clients' RESUME fails (INVALID_SESSION false)."""
        return self.hub.expire_all_sessions()

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
