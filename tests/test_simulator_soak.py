"""Sustained random traffic: afterwards the simulator's truth equals what a discord.py client holds.

The issue asks for a minute at 100 presence changes/s; by default this runs the same comparison on
~12,000 changes at 1,000/s (about 12 s) to keep CI short. DZONE_SIM_SOAK_SECONDS=60
DZONE_SIM_SOAK_RATE=100 runs the issue's exact variant.
"""

from __future__ import annotations

import os
from collections import Counter

import discord

from simulator import SimConfig, Simulator
from simulator.testing import client_view, connected_client, truth_view, view_differences
from tests.waiting import wait_for

SOAK_SECONDS = float(os.environ.get("DZONE_SIM_SOAK_SECONDS", "12"))
SOAK_PRESENCE_RATE = float(os.environ.get("DZONE_SIM_SOAK_RATE", "1000"))


async def test_truth_equals_the_discord_py_cache_after_sustained_traffic() -> None:
    config = SimConfig(
        guild_sizes=[25, 400, 3_000],
        presence_rate=SOAK_PRESENCE_RATE,
        message_rate=SOAK_PRESENCE_RATE / 50,
        churn=SOAK_PRESENCE_RATE / 200,
        seed=21,
        start_paused=True,  # traffic starts once the client holds every member (see docs: chunking race)
    )
    async with Simulator(config) as sim, connected_client(sim) as client:
        received: Counter[str] = Counter()

        async def on_presence_update(before: discord.Member, after: discord.Member) -> None:
            received["PRESENCE_UPDATE"] += 1

        async def on_message(message: discord.Message) -> None:
            received["MESSAGE_CREATE"] += 1

        async def on_member_join(member: discord.Member) -> None:
            received["GUILD_MEMBER_ADD"] += 1

        async def on_member_remove(member: discord.Member) -> None:
            received["GUILD_MEMBER_REMOVE"] += 1

        for handler in (on_presence_update, on_message, on_member_join, on_member_remove):
            client.event(handler)

        offline_before = _offline_share(sim)
        sim.resume()
        expected_changes = int(SOAK_PRESENCE_RATE * SOAK_SECONDS)
        await wait_for(
            lambda: sim.changes_applied >= expected_changes,
            timeout=SOAK_SECONDS * 3 + 10,
            interval=0.2,
            message=f"{expected_changes} scenario changes",
        )
        sim.pause()

        # Barrier: one stream, in order. Once discord.py has this event it has every event before it.
        guild_id = next(iter(sim.world.guilds))
        barrier = client.wait_for("guild_update", check=lambda b, a: a.name == "soak barrier", timeout=30)
        await sim.rename_guild(guild_id, "soak barrier")
        await barrier

        problems = view_differences(truth_view(sim.state()), client_view(client))
        assert not problems, "\n".join(problems)
        dispatched = sim.hub.dispatched_by_event
        for event in ("PRESENCE_UPDATE", "MESSAGE_CREATE", "GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE"):
            assert received[event] == dispatched.get(event, 0), f"{event}: every dispatch fires once"
        assert received["PRESENCE_UPDATE"] >= expected_changes * 0.8
        assert received["GUILD_MEMBER_ADD"] > 0 and received["GUILD_MEMBER_REMOVE"] > 0
        # the status mix stays close to a real server's: most members offline
        assert abs(_offline_share(sim) - offline_before) < 0.1 and _offline_share(sim) > 0.6


def _offline_share(sim: Simulator) -> float:
    members = [m for g in sim.world.guilds.values() for m in g.members.values()]
    return sum(m.user.status == "offline" for m in members) / len(members)
