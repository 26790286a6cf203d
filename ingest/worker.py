"""One ingest process: the discord.py client and the writer, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib

import discord
import structlog

from ingest.fairness import install_cooperative_yield
from ingest.gateway import IngestClient
from ingest.writer import Writer, WriterConfig
from shared.db import redacted
from shared.settings import IngestSettings

log = structlog.get_logger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"


class IngestError(Exception):
    """The worker cannot run (bad token, intents not granted, no database URL...)."""


def point_discord_py(api_base: str, gateway_url: str | None) -> None:
    """Send discord.py's REST calls and gateway connections to ``api_base`` / ``gateway_url``.

    Process-wide (discord.py keeps both in class attributes); unset values leave Discord's own.
    """
    import yarl

    if api_base.rstrip("/") != DEFAULT_API_BASE:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def writer_config(settings: IngestSettings) -> WriterConfig:
    """The writer's part of the settings."""
    return WriterConfig(
        batch_max_rows=settings.batch_max_rows,
        batch_max_delay_s=settings.batch_max_delay_ms / 1000,
        bulk_threshold=settings.bulk_threshold,
        resync_after_outage_s=settings.resync_after_outage_s,
        message_queue_max=settings.message_queue_max,
        stats_interval_s=settings.stats_interval_s,
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
        )
        self.writer = Writer(settings.database_url, self.client, writer_config(settings))
        self.client.writer = self.writer
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

    async def stop(self) -> bool:
        """Disconnect from Discord, then commit what is pending; True when nothing was left behind."""
        await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, discord.DiscordException, OSError):
                await asyncio.wait_for(self._runner, timeout=10)
        flushed = await self.writer.close(timeout=self.settings.shutdown_flush_timeout_s)
        log.info(
            "ingest_stopped",
            flushed=flushed,
            events=self.writer.stats.events,
            rows_committed=self.writer.stats.rows_committed,
        )
        return flushed

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (signals) or the client fails; always stop cleanly."""
        await self.start()
        stop_wait = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({self.runner, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            failure = None
            if self.runner.done() and not self.runner.cancelled():
                failure = self.runner.exception()
            await self.stop()
        if failure is not None:
            raise _explain(failure) from failure


def _explain(exc: BaseException) -> IngestError:
    if isinstance(exc, discord.LoginFailure):
        return IngestError("Discord refused DISCORD_BOT_TOKEN (login failed)")
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return IngestError(
            "the bot lacks privileged intents: enable SERVER MEMBERS and PRESENCE (and MESSAGE CONTENT when "
            "relaying chat) in the developer portal"
        )
    return IngestError(f"the Discord client stopped: {type(exc).__name__}: {exc}")
