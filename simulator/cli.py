"""``dzone simulate``: run the Discord simulator until Ctrl-C and print the URLs to give the ingest."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from simulator.config import SimConfig
from simulator.discordpy import API_BASE_VARIABLE, GATEWAY_URL_VARIABLE


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--guilds", default=2, show_default=True, type=click.IntRange(0, 1000), help="Number of guilds."
)
@click.option(
    "--members", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Members per guild."
)
@click.option(
    "--guild-sizes",
    default=None,
    help="Comma-separated member counts, one per guild (overrides --guilds/--members), e.g. 3,50,10000.",
)
@click.option(
    "--presence-rate", default=2.0, show_default=True, type=click.FloatRange(0), help="Presence changes/s."
)
@click.option("--message-rate", default=0.5, show_default=True, type=click.FloatRange(0), help="Messages/s.")
@click.option("--churn", default=0.05, show_default=True, type=click.FloatRange(0), help="Joins+leaves/s.")
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Same seed, same world and event sequence."
)
@click.option(
    "--bot-token",
    default=None,
    envvar="DZONE_SIM_BOT_TOKEN",
    show_envvar=True,
    help="Accept only this bot token (default: any non-empty token).",
)
@click.option(
    "--shards",
    "recommended_shards",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Shard count GET /gateway/bot recommends.",
)
@click.option("--paused", is_flag=True, help="Start with the scenario paused (POST /_sim/resume to start).")
@click.option("--log-level", default="info", show_default=True)
def simulate(
    host: str,
    port: int,
    guilds: int,
    members: int,
    guild_sizes: str | None,
    presence_rate: float,
    message_rate: float,
    churn: float,
    seed: int,
    bot_token: str | None,
    recommended_shards: int,
    paused: bool,
    log_level: str,
) -> None:
    """Run a local Discord (REST + gateway + /_sim/ control API) for the ingest, demos and tests."""
    from shared import redaction
    from shared.logs import configure

    redaction.add(bot_token)  # the token the simulator accepts is the bot's: never printed either
    configure(log_level)
    sizes: list[int] | None = None
    if guild_sizes:
        try:
            sizes = [int(part) for part in guild_sizes.split(",") if part.strip()]
        except ValueError:
            raise click.BadParameter("must be comma-separated integers", param_hint="--guild-sizes") from None
    config = SimConfig(
        host=host,
        port=port,
        guilds=guilds,
        members=members,
        guild_sizes=sizes,
        presence_rate=presence_rate,
        message_rate=message_rate,
        churn=churn,
        seed=seed,
        bot_token=bot_token,
        recommended_shards=recommended_shards,
        start_paused=paused,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))


async def _serve(config: SimConfig) -> None:
    from simulator.server import Simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        total = sum(len(g.members) for g in sim.world.guilds.values())
        click.echo(f"{API_BASE_VARIABLE}={sim.api_base}")
        click.echo(f"{GATEWAY_URL_VARIABLE}={sim.gateway_url}")
        click.echo(f"# control and truth API: {sim.control_base}/state  (docs/simulator.md)")
        click.echo(
            f"# {len(sim.world.guilds)} guilds, {total} memberships, seed {config.seed}; Ctrl-C to stop"
        )
        await stop.wait()
