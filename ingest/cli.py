"""``dzone ingest``: run the ingest worker until SIGTERM/SIGINT, then flush and exit."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import click

from shared.settings import ConfigError, IngestSettings, load

if TYPE_CHECKING:  # discord.py is imported only once the settings are valid
    from ingest.worker import IngestWorker


def _shard_ids(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        ids = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated shard numbers, e.g. 0,2") from None
    if not ids:
        raise click.BadParameter("expected at least one shard number")
    return ids


@click.command()
@click.option(
    "--shard-count",
    type=click.IntRange(1),
    default=None,
    help="Total shards of the bot (default: DZONE_SHARD_COUNT, else Discord's recommendation).",
)
@click.option(
    "--shard-ids",
    callback=_shard_ids,
    default=None,
    help="Shards this worker runs, e.g. 0,2 (default: all). Needs --shard-count.",
)
@click.option("--include-bots/--skip-bots", default=None, help="Store bot members (default: skip).")
@click.option("--relay-messages/--no-relay-messages", default=None, help="Announce chat (default: on).")
def ingest(
    shard_count: int | None,
    shard_ids: list[int] | None,
    include_bots: bool | None,
    relay_messages: bool | None,
) -> None:
    """Keep discord_servers/discord_users equal to Discord (needs DISCORD_BOT_TOKEN and DATABASE_URL)."""
    overrides = {
        key: value
        for key, value in {
            "shard_count": shard_count,
            "shard_ids": shard_ids,
            "include_bots": include_bots,
            "relay_messages": relay_messages,
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

    configure(settings.log_level, settings.log_format)
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
