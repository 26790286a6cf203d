"""``dzone ingest``: run the ingest worker until SIGTERM/SIGINT, then flush and exit."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import click

from shared.settings import DEFAULT_INGEST_HTTP_PORT, ConfigError, IngestSettings, load, split_list

if TYPE_CHECKING:  # discord.py is imported only once the settings are valid
    from ingest.worker import IngestWorker


def _shard_ids(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        parts = split_list(value)
        ids = [int(part) for part in parts] if isinstance(parts, list) else None
    except (ValueError, TypeError):
        ids = None
    if ids is None:
        raise click.BadParameter("expected shard numbers: 0, or 0,2, or [0,2]") from None
    if not ids:
        raise click.BadParameter("expected at least one shard number")
    return ids


@click.command()
@click.option(
    "--shard-count",
    type=click.IntRange(1),
    default=None,
    envvar="DZONE_SHARD_COUNT",
    show_envvar=True,
    help="Total shards of the bot (default: Discord's recommendation).",
)
@click.option(
    "--shard-ids",
    callback=_shard_ids,
    default=None,
    envvar="DZONE_SHARD_IDS",
    show_envvar=True,
    help="Shards this worker runs: 0, 0,2 or [0,2] (default: all). Needs --shard-count.",
)
@click.option(
    "--include-bots/--skip-bots",
    default=None,
    envvar="DZONE_INCLUDE_BOTS",
    show_envvar=True,
    help="Store bot members (default: skip).",
)
@click.option(
    "--relay-messages/--no-relay-messages",
    default=None,
    envvar="DZONE_RELAY_MESSAGES",
    show_envvar=True,
    help="Announce chat (default: on).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="DZONE_INGEST_HTTP_PORT",
    show_envvar=True,
    help=f"Port of /healthz, /readyz and /metrics; 0 = off (default: {DEFAULT_INGEST_HTTP_PORT}).",
)
@click.option(
    "--http-host",
    default=None,
    envvar="DZONE_INGEST_HTTP_HOST",
    show_envvar=True,
    help="Address of that port (default: 127.0.0.1; 0.0.0.0 to be scraped from other hosts).",
)
def ingest(
    shard_count: int | None,
    shard_ids: list[int] | None,
    include_bots: bool | None,
    relay_messages: bool | None,
    http_port: int | None,
    http_host: str | None,
) -> None:
    """Keep discord_servers/discord_users equal to Discord (needs DISCORD_BOT_TOKEN and DATABASE_URL)."""
    overrides = {
        key: value
        for key, value in {
            "shard_count": shard_count,
            "shard_ids": shard_ids,
            "include_bots": include_bots,
            "relay_messages": relay_messages,
            "ingest_http_port": DEFAULT_INGEST_HTTP_PORT if http_port is None else http_port,
            "ingest_http_host": http_host,
        }.items()
        if value is not None
    }
    try:
        settings = load(IngestSettings, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.shard_ids is not None:
        if settings.shard_count is None:
            raise click.ClickException("--shard-ids needs --shard-count")
        bad = [i for i in settings.shard_ids if not 0 <= i < settings.shard_count]
        if bad:
            raise click.ClickException(f"shard ids {bad} are outside 0..{settings.shard_count - 1}")

    from ingest.worker import IngestError, IngestWorker
    from shared.logs import configure

    configure(settings.log_level, settings.log_format, traceback_locals=settings.log_traceback_locals)
    try:
        asyncio.run(_main(IngestWorker(settings)))
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None


async def _main(worker: IngestWorker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)
