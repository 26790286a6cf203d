"""Pure logic of the simulator: role colours, names, determinism, sharding, RESUME bookkeeping, config."""

from __future__ import annotations

import random
import re

import pytest

from shared.discord_rules import shard_of
from simulator import SimConfig, role_color
from simulator.gateway import Session
from simulator.names import NameMaker, ascii_fold
from simulator.payloads import WorldTruth
from simulator.scenario import STATUS_MIX, Traffic, WorldBuilder, poisson
from simulator.testing import MemberView, View, view_differences
from simulator.world import Guild, Member, Role, User, display_name

USERNAME = re.compile(r"^[a-z0-9_.]{2,32}$")


def make_guild(*roles: Role) -> Guild:
    guild = Guild(id=1000, name="g", owner_id=1)
    guild.roles[1000] = Role(id=1000, name="@everyone", color=0xFFFFFF, position=0)
    for role in roles:
        guild.roles[role.id] = role
    return guild


def member(roles: list[int], nick: str | None = None, global_name: str | None = None) -> Member:
    return Member(
        User(id=5, username="user_5", global_name=global_name), nick, roles, "2022-01-01T00:00:00+00:00"
    )


def test_role_color_is_the_highest_coloured_role_else_the_default_grey() -> None:
    guild = make_guild(
        Role(id=1, name="red", color=0xFF0000, position=1),
        Role(id=2, name="uncoloured", color=0, position=5),
        Role(id=3, name="blue", color=0x0000FF, position=3),
        Role(id=4, name="tie-low-id", color=0x00FF00, position=7),
        Role(id=9, name="tie-high-id", color=0xABCDEF, position=7),
    )
    assert role_color(guild, member([1, 2, 3])) == "#0000ff"  # position 5 has no colour: the next one
    assert role_color(guild, member([1])) == "#ff0000"
    assert role_color(guild, member([2])) == "#99aab5"
    assert role_color(guild, member([])) == "#99aab5"
    assert role_color(guild, member([1000])) == "#99aab5"  # @everyone never colours
    assert (
        role_color(guild, member([9, 4])) == "#00ff00"
    )  # discord.py: on equal position the lower id is higher
    assert role_color(guild, member([77])) == "#99aab5"  # a role id that no longer exists is ignored


def test_display_name_is_nick_then_global_name_then_username() -> None:
    assert display_name(member([], nick="N", global_name="G")) == "N"
    assert display_name(member([], global_name="G")) == "G"
    assert display_name(member([])) == "user_5"


def test_names_are_valid_unique_and_varied() -> None:
    maker = NameMaker(random.Random(1))
    people = [maker.human() for _ in range(3000)]
    usernames = [u for u, _ in people] + [maker.bot() for _ in range(50)]
    assert all(USERNAME.match(u) for u in usernames), [u for u in usernames if not USERNAME.match(u)][:5]
    assert len(set(usernames)) == len(usernames)
    display = "".join(g or "" for _, g in people)
    assert any(ord(ch) > 0x3000 for ch in display)  # CJK
    assert any(ord(ch) > 0x1F000 for ch in display)  # emoji
    assert "é" in display or "ö" in display  # accents
    assert ascii_fold("Chloé") == "chloe" and ascii_fold("さくら") == ""


def test_the_same_seed_builds_the_same_world_and_the_same_traffic() -> None:
    config = SimConfig(guild_sizes=[3, 120, 40], seed=42, presence_rate=500, message_rate=50, churn=20)

    def run() -> tuple[WorldTruth, list[object]]:
        builder = WorldBuilder(config.seed)
        world = builder.build(config)
        traffic = Traffic(config, world, builder)
        return world.truth(), [change for _ in range(20) for change in traffic.tick(0.05)]

    first, second = run(), run()
    assert first == second
    assert (
        run()[0] != (lambda: WorldBuilder(43).build(SimConfig(guild_sizes=[3, 120, 40], seed=43)).truth())()
    )


def test_world_shape_guild_sizes_bots_and_status_mix() -> None:
    config = SimConfig(guild_sizes=[3, 5_000], seed=7)
    world = WorldBuilder(config.seed).build(config)
    sizes = [len(g.members) for g in world.guilds.values()]
    assert sizes == [3, 5_000]
    members = list(world.guilds[list(world.guilds)[1]].members.values())
    offline = sum(m.user.status == "offline" for m in members) / len(members)
    assert abs(offline - dict(STATUS_MIX)["offline"]) < 0.05
    assert 0.01 < sum(m.user.bot for m in members) / len(members) < 0.06
    assert all(world.bot_user.id in g.members for g in world.guilds.values())
    colours = {role_color(g, m) for g in world.guilds.values() for m in g.members.values()}
    assert len(colours) > 3


def test_poisson_mean_is_right_at_low_and_high_rates() -> None:
    rng = random.Random(3)
    for mean in (0.5, 4.0, 300.0):
        draws = [poisson(rng, mean) for _ in range(4000)]
        assert abs(sum(draws) / len(draws) - mean) < mean * 0.05 + 0.05
    assert poisson(rng, 0) == 0


def test_shard_of_follows_discords_rule() -> None:
    guild_id = 81384788765712384
    assert shard_of(guild_id, 1) == 0
    assert shard_of(guild_id, 2) == (guild_id >> 22) % 2


def test_session_keeps_exactly_what_a_resume_needs() -> None:
    session = Session(shard_id=0, shard_count=1, intents=0, large_threshold=50, replay_limit=5)
    for _ in range(8):
        session.dispatch(b"X", b"{}")
    assert session.frames_after(8) == []
    assert session.frames_after(3) is not None and len(session.frames_after(3) or []) == 5
    assert session.frames_after(2) is None  # frame 3 fell out of the replay buffer
    assert session.frames_after(9) is None  # the client claims more than was sent
    session.acknowledge(6)
    assert [f.split(b",")[1] for f in session.frames_after(6) or []] == [b'"s":7', b'"s":8']
    assert session.frames_after(5) is None


def test_config_validation_names_the_bad_setting() -> None:
    with pytest.raises(ValueError, match="at least 1 member"):
        SimConfig(guild_sizes=[0]).validate()
    with pytest.raises(ValueError, match="presence_rate"):
        SimConfig(presence_rate=-1).validate()
    with pytest.raises(ValueError, match="privileged"):
        SimConfig(privileged_intents=frozenset({"admin"})).validate()


def test_view_differences_reports_a_mismatch() -> None:
    def one_member(status: str) -> View:
        member: MemberView = {
            "username": "u",
            "display_name": "u",
            "status": status,
            "role_color": "#99aab5",
            "bot": False,
        }
        return {"1": {"name": "g", "member_count": 1, "members": {"5": member}}}

    view, other = one_member("online"), one_member("idle")
    assert view_differences(view, view) == []
    assert "member 5" in view_differences(view, other)[0]
    assert "only in truth" in view_differences(view, {})[0]


def test_chat_traffic_is_mostly_in_ordinary_channels_never_in_a_category() -> None:
    config = SimConfig(guild_sizes=[200], seed=8, message_rate=1)
    builder = WorldBuilder(config.seed)
    world = builder.build(config)
    guild = next(iter(world.guilds.values()))
    posts = Traffic(config, world, builder).messages(4000)
    channels = [guild.channels[p.channel_id] for p in posts]
    assert all(c.takes_messages for c in channels)
    restricted = sum(bool(c.overwrites or c.nsfw or c.is_thread) for c in channels) / len(channels)
    assert 0.05 < restricted < 0.15
    assert {c.name for c in channels} >= {"staff-room", "mod-log", "after-dark", "welcome", "thread-chat"}


def test_building_the_privacy_channels_keeps_a_seeds_guild_and_member_ids() -> None:
    # The privacy channels are added after every guild and member, without RNG draws.
    config = SimConfig(guild_sizes=[3, 40], seed=5)
    world = WorldBuilder(config.seed).build(config)
    guild_ids = list(world.guilds)
    for guild in world.guilds.values():
        extra = [c for c in guild.channels.values() if c.id > max(guild_ids) and c.id > max(guild.members)]
        assert {c.name for c in extra} == {
            "staff-room",
            "Moderators",
            "mod-log",
            "after-dark",
            "welcome",
            "thread-chat",
            "staff-thread",
        }
