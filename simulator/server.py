"""The in-process simulator: one aiohttp server (REST, gateway, control API) plus the scenario task.

async with Simulator(SimConfig(guild_sizes=[3, 50], seed=1)) as sim:
    sim.point_discord_py()  # or use sim.api_base / sim.gateway_url
    ...
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import structlog
from aiohttp import web

from shared.discord_rules import point_discord_py
from simulator.config import SimConfig
from simulator.control import CONTROL_PREFIX, ControlApi
from simulator.scenario import (
    Change,
    MemberJoin,
    MemberLeave,
    MessagePost,
    NickChange,
    PresenceChange,
    Traffic,
)
from simulator.steering import Steering
from simulator.world import SimulatorError

log = structlog.get_logger(__name__)

TICK_S = 0.01  # scenario granularity; rates are kept by drawing Poisson counts for the elapsed time
MAX_TICK_S = 0.25  # after a stall, do not burst more than this much simulated time at once
MAX_CHANGES_PER_TICK = 2_000  # keeps the loop responsive and backpressure effective at extreme rates
HOUSEKEEPING_S = 5.0


class Simulator(Steering):
    """A local Discord on one port; an async context manager that binds, runs and tears everything down."""

    def __init__(self, config: SimConfig | None = None) -> None:
        super().__init__(config or SimConfig())
        self.traffic = Traffic(self.config, self.world, self.builder)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

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
        point_discord_py(self.api_base, self.gateway_url)

    # -- lifecycle ----------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self.rest.fault_middleware])
        app.add_routes(
            [
                web.get("/gateway", self.hub.handle),
                web.get("/gateway/resume", self.hub.handle),
                *ControlApi(self).routes(),
                # Application commands (simulator/interactions.py): before the REST catch-all.
                *self.interactions.control_routes(CONTROL_PREFIX),
                *self.interactions.rest_routes(),
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

    def _apply(self, change: Change) -> None:
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
