"""Helpers for tests that run the real discord.py against the simulator (imports discord.py on use).

``connected_client`` starts a discord.py client and waits for on_ready; ``client_view`` and
``truth_view`` put what discord.py holds and what the simulator knows into the same comparable shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypedDict

from shared.discord_rules import DEFAULT_ROLE_COLOR
from simulator.payloads import WorldTruth

if TYPE_CHECKING:
    import discord

    from simulator.server import Simulator

SIM_TOKEN = "simulated-bot-token"


class MemberView(TypedDict):
    username: str
    display_name: str
    status: str
    role_color: str
    bot: bool


class GuildView(TypedDict):
    name: str
    member_count: int | None
    members: dict[str, MemberView]


# guild id -> what a client holds (or the truth says) about the guild
View = dict[str, GuildView]


def all_intents() -> discord.Intents:
    """Default intents plus the three privileged ones (what the ingest asks for)."""
    import discord

    intents = discord.Intents.default()
    intents.members = True
    intents.presences = True
    intents.message_content = True
    return intents


@asynccontextmanager
async def connected_client(
    sim: Simulator,
    *,
    intents: discord.Intents | None = None,
    client_class: type[discord.Client] | None = None,
    token: str = SIM_TOKEN,
    ready_timeout: float = 60.0,
    fast_identify: bool = True,
    **options: Any,
) -> AsyncIterator[discord.Client]:
    """A discord.py client connected to ``sim`` and past on_ready; closed on exit.

    Options go to the client's constructor; ``guild_ready_timeout`` defaults to 0.1 s (discord.py's 2 s
    only slows tests down: the simulator sends every GUILD_CREATE at once). ``fast_identify`` skips
    discord.py's 5 s pause before every IDENTIFY but the first (Discord's identify rate limit, which the
    simulator does not enforce).
    """
    import discord

    sim.point_discord_py()
    options.setdefault("guild_ready_timeout", 0.1)
    cls = client_class or discord.Client
    client = cls(intents=intents or all_intents(), **options)
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    client.event(on_ready)
    if fast_identify:

        async def before_identify_hook(shard_id: int | None, *, initial: bool = False) -> None:
            return None

        client.before_identify_hook = before_identify_hook  # type: ignore[method-assign]
    runner = asyncio.create_task(client.start(token), name="discord-client")
    ready_wait = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait(
            {runner, ready_wait}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if runner in done:
            runner.result()  # raises the client's failure (LoginFailure, PrivilegedIntentsRequired...)
            raise AssertionError("discord.py client stopped before on_ready")
        if ready_wait not in done:
            raise AssertionError(f"discord.py client not ready after {ready_timeout}s")
        yield client
    finally:
        ready_wait.cancel()
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(runner, timeout=10)


def colour_hex(colour: discord.Colour) -> str:
    """d-zone's rendering of a discord.py colour: ``#rrggbb``, the default grey when uncoloured."""
    return f"#{colour.value:06x}" if colour.value else DEFAULT_ROLE_COLOR


def client_view(client: discord.Client) -> View:
    """What a discord.py client holds, keyed by guild id and user id (strings)."""
    return {
        str(guild.id): {
            "name": guild.name,
            "member_count": guild.member_count,
            "members": {
                str(m.id): {
                    "username": m.name,
                    "display_name": m.display_name,
                    "status": str(m.status),
                    "role_color": colour_hex(m.colour),
                    "bot": m.bot,
                }
                for m in guild.members
            },
        }
        for guild in client.guilds
    }


def truth_view(state: WorldTruth, guild_ids: set[str] | None = None) -> View:
    """The simulator's truth (``Simulator.state()`` or ``GET /_sim/state``) in :func:`client_view`'s shape."""
    return {
        guild["id"]: {
            "name": guild["name"],
            "member_count": guild["member_count"],
            "members": {
                m["user_id"]: {
                    "username": m["username"],
                    "display_name": m["display_name"],
                    "status": m["status"],
                    "role_color": m["role_color"],
                    "bot": m["bot"],
                }
                for m in guild["members"]
            },
        }
        for guild in state["guilds"]
        if guild_ids is None or guild["id"] in guild_ids
    }


def view_differences(truth: View, seen: View, limit: int = 20) -> list[str]:
    """Human-readable differences between two views (empty when equal), for assertion messages."""
    problems: list[str] = []
    for guild_id in sorted(set(truth) | set(seen)):
        if guild_id not in seen or guild_id not in truth:
            problems.append(f"guild {guild_id}: only in {'truth' if guild_id in truth else 'client'}")
            continue
        t, s = truth[guild_id], seen[guild_id]
        for key, in_truth, in_client in (
            ("name", t["name"], s["name"]),
            ("member_count", t["member_count"], s["member_count"]),
        ):
            if in_truth != in_client:
                problems.append(f"guild {guild_id} {key}: truth {in_truth!r} client {in_client!r}")
        for user_id in sorted(set(t["members"]) | set(s["members"])):
            tm, sm = t["members"].get(user_id), s["members"].get(user_id)
            if tm != sm:
                problems.append(f"guild {guild_id} member {user_id}: truth {tm} client {sm}")
        if len(problems) >= limit:
            break
    return problems[:limit]
