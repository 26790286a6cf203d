"""One ingest process: the discord.py client and the writer, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime

import discord
import structlog

from ingest.commands import SlashCommands
from ingest.fairness import install_cooperative_yield
from ingest.gateway import IngestClient
from ingest.health import HealthServer, shard_heartbeat
from ingest.writer import Writer, WriterConfig
from shared.db import redacted
from shared.discord_rules import point_discord_py
from shared.errors import DzoneError
from shared.settings import IngestSettings

log = structlog.get_logger(__name__)


class IngestError(DzoneError):
    """The worker cannot run (bad token, intents not granted, no database URL...)."""


def writer_config(settings: IngestSettings) -> WriterConfig:
    """The writer's part of the settings."""
    return WriterConfig(
        batch_max_rows=settings.batch_max_rows,
        batch_max_delay_s=settings.batch_max_delay_ms / 1000,
        bulk_threshold=settings.bulk_threshold,
        sync_connections=settings.sync_connections,
        resync_after_outage_s=settings.resync_after_outage_s,
        message_queue_max=settings.message_queue_max,
        stats_interval_s=settings.stats_interval_s,
        pooler=settings.database_pooler,
    )


class IngestWorker:
    """``start()`` connects to Discord and begins writing; ``stop()`` disconnects and flushes."""

    def __init__(self, settings: IngestSettings) -> None:
        if not settings.database_url:
            raise IngestError("DATABASE_URL is required for the ingest (a libpq URL)")
        self.settings = settings
        self.client = IngestClient(
            include_bots=settings.include_bots,
            relay_messages=settings.relay_messages,
            shard_count=settings.shard_count,
            shard_ids=settings.shard_ids,
            guild_ready_timeout=settings.guild_ready_timeout_s,
            identify_reserve=settings.identify_reserve,
        )
        instance = f"{socket.gethostname()}:{os.getpid()}"
        started_at = datetime.now(UTC)
        self.writer = Writer(
            settings.database_url,
            self.client,
            writer_config(settings),
            heartbeat=lambda: shard_heartbeat(self.client, instance, started_at),
        )
        self.client.writer = self.writer
        self.commands = SlashCommands(self.client, settings)
        self.client.after_login.append(self.commands.register)
        self.health: HealthServer | None = None
        if settings.ingest_http_port:
            self.health = HealthServer(
                self.client,
                self.writer,
                host=settings.ingest_http_host,
                port=settings.ingest_http_port,
                pending_rows_max=settings.ready_max_pending_rows,
            )
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Point discord.py where configured, start the writer, log in and connect the shards."""
        settings = self.settings
        point_discord_py(settings.discord_api_base, settings.discord_gateway_url)
        install_cooperative_yield()
        log.info(
            "ingest_starting",
            database=redacted(settings.database_url or ""),
            api_base=discord.http.Route.BASE,
            shard_count=settings.shard_count,
            shard_ids=settings.shard_ids,
            include_bots=settings.include_bots,
            relay_messages=settings.relay_messages,
        )
        if self.health is not None:
            try:
                await self.health.start()
            except OSError as exc:
                raise IngestError(
                    f"cannot listen on {self.health.host}:{self.health.port} for /healthz, /readyz, /metrics "
                    f"(DZONE_INGEST_HTTP_PORT): {exc}"
                ) from exc
        self.writer.start()
        self._runner = asyncio.create_task(
            self.client.start(settings.discord_bot_token.get_secret_value()), name="discord-client"
        )

    @property
    def runner(self) -> asyncio.Task[None]:
        """The discord.py client's task: it ends when the client stops or fails."""
        if self._runner is None:
            raise RuntimeError("the worker was not started")
        return self._runner

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task the worker needs: the discord.py client's and the writer's."""
        return [self.runner, *self.writer.tasks]

    async def stop(self) -> bool:
        """Disconnect from Discord, then commit what is pending; True when nothing was left behind."""
        await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, discord.DiscordException, OSError):
                await asyncio.wait_for(self._runner, timeout=10)
        flushed = await self.writer.close(timeout=self.settings.shutdown_flush_timeout_s)
        await self.commands.close()
        if self.health is not None:
            await self.health.stop()
        log.info(
            "ingest_stopped",
            flushed=flushed,
            events=self.writer.stats.events,
            rows_committed=self.writer.stats.rows_committed,
        )
        return flushed

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (signals) or one of the worker's tasks ends; always stop cleanly.

        A task that ends on its own is a failure (the client gave up, the writer died): it is logged and
        raised as :class:`IngestError`, so the process exits non-zero and a supervisor restarts it.
        Except a permanent refusal by Discord (bad token, privileged intents not granted): a restart
        would be refused the same way, each time spending an IDENTIFY of the day's budget, so the
        process stays up, not ready, saying why (log, /readyz, ``dzone status``) until it is stopped.
        """
        await self.start()
        stop_wait = asyncio.create_task(stop.wait())
        ended: asyncio.Task[None] | None = None
        try:
            done, _ = await asyncio.wait({*self.tasks, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            ended = next((task for task in self.tasks if task in done), None)
            refusal = None
            if ended is not None and ended is self._runner:
                refusal = permanent_refusal(_task_failure(ended))
            if refusal is not None:
                self.client.refusal = refusal
                log.error(
                    "discord_refused", reason=refusal, action="fix the setting, then restart the ingest"
                )
                writer_tasks = self.writer.tasks
                done, _ = await asyncio.wait({*writer_tasks, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                ended = next((task for task in writer_tasks if task in done), None)
        finally:
            stop_wait.cancel()
            failure: BaseException | None = None
            if ended is not None:
                failure = _task_failure(ended)
                log.error(
                    "ingest_task_ended",
                    task=ended.get_name(),
                    error=f"{type(failure).__name__}: {failure}",
                    exc_info=failure if failure.__traceback__ is not None else None,
                )
            await self.stop()
        if failure is not None:
            raise _explain(failure, ended) from failure


def _task_failure(task: asyncio.Task[None]) -> BaseException:
    """Why a task that should run forever ended."""
    if task.cancelled():
        return asyncio.CancelledError(f"task {task.get_name()} was cancelled")
    exc = task.exception()
    if exc is not None:
        return exc
    return RuntimeError(f"task {task.get_name()} returned")


# Gateway close codes no retry can cure (4004 bad token, 4010-4014 shard, version and intent errors).
PERMANENT_CLOSE_CODES = {
    4004: "Discord refused DISCORD_BOT_TOKEN at IDENTIFY (close 4004): set the bot's current token",
    4010: "Discord refused the shard (close 4010 invalid shard): check DZONE_SHARD_COUNT and DZONE_SHARD_IDS",
    4011: "Discord requires sharding (close 4011): set DZONE_SHARD_COUNT (or leave it unset)",
    4012: "Discord refused the gateway API version (close 4012): upgrade dzone-pg",
    4013: "Discord refused the intents (close 4013 invalid intents): upgrade dzone-pg",
    4014: (
        "the bot lacks privileged intents (close 4014): enable SERVER MEMBERS and PRESENCE (and MESSAGE "
        "CONTENT when relaying chat, or set DZONE_RELAY_MESSAGES=false) in the developer portal; a bot in "
        "100 or more servers needs them approved by Discord"
    ),
}


def permanent_refusal(exc: BaseException) -> str | None:
    """Why Discord will refuse this ingest whatever the number of retries, or None for other failures."""
    if isinstance(exc, discord.LoginFailure):
        return "Discord refused DISCORD_BOT_TOKEN (401 at login): set the bot's current token"
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return PERMANENT_CLOSE_CODES[4014]
    if isinstance(exc, discord.ConnectionClosed):
        return PERMANENT_CLOSE_CODES.get(exc.code)
    return None


def _explain(exc: BaseException, task: asyncio.Task[None] | None = None) -> IngestError:
    if task is not None and task.get_name() != "discord-client":
        return IngestError(f"the ingest task {task.get_name()} ended: {type(exc).__name__}: {exc}")
    return IngestError(f"the Discord client stopped: {type(exc).__name__}: {exc}")
