"""The real discord.py against the simulator: READY, chunking, every injected event, faults, intents, tokens."""

from __future__ import annotations

import discord
import pytest

from shared.discord_rules import shard_of
from simulator import SimConfig, Simulator
from simulator.testing import (
    all_intents,
    client_view,
    colour_hex,
    connected_client,
    truth_view,
    view_differences,
)
from tests.waiting import wait_for

EVENT_TIMEOUT = 10.0


def guild_ids(sim: Simulator) -> list[int]:
    return list(sim.world.guilds)


def a_member(sim: Simulator, guild_id: int, *, status: str | None = None) -> int:
    """A human member other than the bot (optionally with the given status)."""
    for member in sim.world.guilds[guild_id].members.values():
        if member.user.bot:
            continue
        if status is None or member.user.status == status:
            return member.user.id
    raise AssertionError(f"no such member in guild {guild_id}")


def assert_client_matches_truth(sim: Simulator, client: discord.Client) -> None:
    problems = view_differences(truth_view(sim.state()), client_view(client))
    assert not problems, "\n".join(problems)


async def test_ready_with_every_member_status_and_colour_including_a_chunked_10k_guild() -> None:
    config = SimConfig(guild_sizes=[3, 50, 10_000], seed=11)
    async with Simulator(config) as sim, connected_client(sim) as client:
        assert client.user is not None and client.user.id == sim.world.bot_user.id
        assert len(client.guilds) == 3
        big = client.get_guild(guild_ids(sim)[2])
        assert big is not None and big.large and big.chunked and len(big.members) == 10_000
        assert sim.hub.counters["member_chunks"] == 10  # 1,000 a chunk; the small guilds needed none
        # the big guild came in pieces: GUILD_CREATE held only members who are not offline
        assert sum(1 for m in sim.world.guilds[big.id].members.values() if m.user.status != "offline") < 5_000
        assert_client_matches_truth(sim, client)
        statuses = {str(m.status) for m in big.members}
        assert statuses == {"online", "idle", "dnd", "offline"}
        colours = {colour_hex(m.colour) for m in big.members}
        assert len(colours) > 3 and "#99aab5" in colours


async def test_auto_sharded_client_with_two_shards_gets_every_guild_on_its_shard() -> None:
    config = SimConfig(guild_sizes=[3, 40, 300, 20, 60], seed=5, recommended_shards=2)
    async with Simulator(config) as sim:
        assert {shard_of(g, 2) for g in guild_ids(sim)} == {0, 1}, (
            "the seed should spread guilds over both shards"
        )
        async with connected_client(sim, client_class=discord.AutoShardedClient) as client:
            assert isinstance(client, discord.AutoShardedClient)
            assert client.shard_count == 2 and set(client.shards) == {0, 1}
            for guild in client.guilds:
                assert guild.shard_id == shard_of(guild.id, 2)
            assert sim.hub.counters["identify"] == 2
            assert_client_matches_truth(sim, client)
            # an event reaches the client through the right shard
            guild_id = guild_ids(sim)[1]
            user_id = a_member(sim, guild_id, status="offline")
            waiter = client.wait_for(
                "presence_update", check=lambda b, a: a.id == user_id, timeout=EVENT_TIMEOUT
            )
            await sim.set_presence(guild_id, user_id, "dnd")
            _, after = await waiter
            assert after.status is discord.Status.dnd and after.guild.shard_id == shard_of(guild_id, 2)


async def test_each_injected_event_fires_the_matching_discord_py_event() -> None:
    async with Simulator(SimConfig(guild_sizes=[30, 30], seed=3)) as sim, connected_client(sim) as client:
        guild_id, other_guild_id = guild_ids(sim)
        guild = client.get_guild(guild_id)
        assert guild is not None

        # presence
        user_id = a_member(sim, guild_id, status="offline")
        waiter = client.wait_for("presence_update", check=lambda b, a: a.id == user_id, timeout=EVENT_TIMEOUT)
        await sim.set_presence(guild_id, user_id, "idle")
        before, after = await waiter
        assert before.status is discord.Status.offline and after.status is discord.Status.idle

        # message
        channel_id = next(iter(sim.world.guilds[guild_id].channels))
        waiter = client.wait_for("message", timeout=EVENT_TIMEOUT)
        await sim.send_message(guild_id, channel_id, user_id, "héllo 🌸 世界")
        message = await waiter
        assert (message.content, message.channel.id, message.author.id) == (
            "héllo 🌸 世界",
            channel_id,
            user_id,
        )
        assert message.guild is not None and message.guild.id == guild_id

        # join
        role_id = max(
            (r for r in sim.world.guilds[guild_id].roles.values() if r.color and not r.managed),
            key=lambda r: r.position,
        ).id
        waiter = client.wait_for("member_join", timeout=EVENT_TIMEOUT)
        joined = await sim.add_member(
            guild_id, username="new_person", global_name="Zoë ✨", status="online", roles=[role_id]
        )
        member = await waiter
        assert (str(member.id), member.name, member.display_name) == (
            joined["user_id"],
            "new_person",
            "Zoë ✨",
        )
        assert colour_hex(member.colour) == joined["role_color"] != "#99aab5"
        await wait_for(
            lambda: (seen := guild.get_member(member.id)) is not None and str(seen.status) == "online",
            message="joiner's presence",
        )

        # member update: nick and roles
        waiter = client.wait_for("member_update", check=lambda b, a: a.id == member.id, timeout=EVENT_TIMEOUT)
        await sim.update_member(guild_id, member.id, nick="Nicky", roles=[])
        before, after = await waiter
        assert (before.nick, after.nick, after.display_name) == (None, "Nicky", "Nicky")
        assert colour_hex(after.colour) == "#99aab5"

        # role colour
        waiter = client.wait_for("guild_role_update", timeout=EVENT_TIMEOUT)
        await sim.set_role_color(guild_id, role_id, 0x123456)
        old_role, new_role = await waiter
        assert new_role.id == role_id and new_role.colour.value == 0x123456 != old_role.colour.value

        # rename
        waiter = client.wait_for("guild_update", timeout=EVENT_TIMEOUT)
        await sim.rename_guild(guild_id, "Renamed Café ☕")
        old_guild, new_guild = await waiter
        assert new_guild.name == "Renamed Café ☕" != old_guild.name

        # leave
        waiter = client.wait_for("member_remove", timeout=EVENT_TIMEOUT)
        await sim.remove_member(guild_id, member.id)
        removed = await waiter
        assert removed.id == member.id and guild.get_member(member.id) is None

        assert_client_matches_truth(sim, client)

        # the bot is removed from a guild
        waiter = client.wait_for("guild_remove", timeout=EVENT_TIMEOUT)
        await sim.remove_guild(other_guild_id)
        gone = await waiter
        assert gone.id == other_guild_id and client.get_guild(other_guild_id) is None
        assert [g["id"] for g in sim.state()["guilds"]] == [str(guild_id)]


async def test_reconnect_leads_to_resume_with_no_event_lost() -> None:
    async with Simulator(SimConfig(guild_sizes=[200], seed=8)) as sim, connected_client(sim) as client:
        guild_id = guild_ids(sim)[0]
        seen: list[tuple[int, str]] = []

        async def on_presence_update(before: discord.Member, after: discord.Member) -> None:
            seen.append((after.id, str(after.status)))

        client.event(on_presence_update)
        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        assert await sim.send_reconnect() == 1
        # these happen while the client is reconnecting: they must be replayed on RESUME
        sent = []
        for user_id in [m for m in sim.world.guilds[guild_id].members if m != sim.world.bot_user.id][:50]:
            status = "dnd" if sim.world.users[user_id].status != "dnd" else "online"
            await sim.set_presence(guild_id, user_id, status)
            sent.append((user_id, status))
        await resumed
        await wait_for(lambda: len(seen) >= len(sent), message="all presence updates after RESUME")
        assert seen == sent
        assert sim.hub.counters["identify"] == 1 and sim.hub.counters["resume"] == 1
        assert sim.hub.connections_by_path.get("/gateway/resume") == 1, "RESUME must use resume_gateway_url"
        assert_client_matches_truth(sim, client)

        # a dropped TCP connection (no close frame) also resumes
        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        await sim.drop_connections()
        await sim.set_presence(guild_id, sent[0][0], "idle")
        await resumed
        await wait_for(lambda: seen[-1] == (sent[0][0], "idle"), message="presence sent while dropped")
        assert sim.hub.counters["resume"] == 2 and sim.hub.counters["identify"] == 1


async def test_invalid_session_leads_to_a_fresh_identify() -> None:
    async with Simulator(SimConfig(guild_sizes=[40], seed=9)) as sim, connected_client(sim) as client:
        guild_id = guild_ids(sim)[0]
        user_id = a_member(sim, guild_id)
        ready_again = client.wait_for("ready", timeout=EVENT_TIMEOUT)
        assert await sim.send_invalid_session(resumable=False) == 1
        await sim.set_presence(guild_id, user_id, "dnd")  # not resumable: it arrives in the new GUILD_CREATE
        await ready_again
        assert sim.hub.counters["identify"] == 2 and sim.hub.counters["resume"] == 0
        guild = client.get_guild(guild_id)
        seen = guild.get_member(user_id) if guild is not None else None
        assert seen is not None and str(seen.status) == "dnd"
        assert_client_matches_truth(sim, client)

        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        await sim.send_invalid_session(resumable=True)
        await resumed
        assert sim.hub.counters["identify"] == 2 and sim.hub.counters["resume"] == 1


async def test_unacknowledged_heartbeats_make_the_client_reconnect() -> None:
    config = SimConfig(guild_sizes=[5], seed=2, heartbeat_interval_ms=200)
    async with Simulator(config) as sim, connected_client(sim, heartbeat_timeout=1.0) as client:
        resumed = client.wait_for("resumed", timeout=EVENT_TIMEOUT)
        assert sim.stop_heartbeat_acks() == 1
        await resumed  # discord.py gave up on the silent socket and resumed on a new one
        assert sim.hub.counters["resume"] == 1
        assert all(c.ack_heartbeats for c in sim.hub.connections)


async def test_missing_privileged_intent_raises_privileged_intents_required() -> None:
    config = SimConfig(guild_sizes=[5], privileged_intents=frozenset({"members", "message_content"}))
    async with Simulator(config) as sim:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with connected_client(sim, intents=all_intents()):
                pass


async def test_wrong_token_fails_login_clearly() -> None:
    async with Simulator(SimConfig(guild_sizes=[5], bot_token="the-right-token")) as sim:
        with pytest.raises(discord.LoginFailure):
            async with connected_client(sim, token="a-wrong-token"):
                pass
        async with connected_client(sim, token="the-right-token") as client:
            assert len(client.guilds) == 1


async def test_without_presences_intent_no_presence_and_without_content_intent_empty_messages() -> None:
    intents = discord.Intents.default()
    intents.members = True
    async with (
        Simulator(SimConfig(guild_sizes=[60], seed=4)) as sim,
        connected_client(sim, intents=intents) as client,
    ):
        guild_id = guild_ids(sim)[0]
        guild = client.get_guild(guild_id)
        assert guild is not None and len(guild.members) == 60  # chunked, since GUILD_CREATE held only the bot
        assert {str(m.status) for m in guild.members} == {"offline"}
        presences: list[int] = []

        async def on_presence_update(before: discord.Member, after: discord.Member) -> None:
            presences.append(after.id)

        client.event(on_presence_update)
        user_id = a_member(sim, guild_id)
        await sim.set_presence(guild_id, user_id, "online")
        channel_id = next(iter(sim.world.guilds[guild_id].channels))
        waiter = client.wait_for("message", timeout=EVENT_TIMEOUT)
        await sim.send_message(guild_id, channel_id, user_id, "secret words")
        message = await waiter
        assert message.content == "" and message.author.id == user_id
        assert presences == []  # the presence was sent before the message, so it would have arrived
