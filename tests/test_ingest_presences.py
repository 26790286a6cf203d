"""HeldPresences, the logic that keeps presences the member table cannot place yet (plain objects stand in)."""

from __future__ import annotations

from dataclasses import dataclass, field

import discord

from ingest.gateway import IngestClient
from ingest.presences import HeldPresences

NOT_APPLIED = "not applied"  # no presence was ever put on the fake member


@dataclass
class FakeMember:
    id: int
    guild: FakeGuild
    status: str = NOT_APPLIED


@dataclass(eq=False)
class FakeGuild:
    id: int
    members: dict[int, FakeMember] = field(default_factory=dict)
    unavailable: bool = False

    def get_member(self, user_id: int, /) -> FakeMember | None:
        return self.members.get(user_id)

    def add(self, user_id: int) -> FakeMember:
        member = self.members[user_id] = FakeMember(user_id, self)
        return member


def observe(held: HeldPresences, guild: FakeGuild | None, user_id: int, status: str) -> None:
    held.observe(guild, user_id, status)


def test_a_presence_for_an_unknown_member_is_applied_once_it_is_chunked() -> None:
    held, guild = HeldPresences(), FakeGuild(1)
    observe(held, guild, 10, "offline")
    observe(held, guild, 10, "online")  # the newest wins
    observe(held, guild, 11, "idle")
    ten = guild.add(10)  # a chunk brought member 10 only
    assert held.apply_guild(guild) == 1
    assert ten.status == "online" and held.held == 1
    eleven = guild.add(11)
    held.apply_guild(guild)
    assert eleven.status == "idle" and held.held == 0
    assert held.counts() == {"held": 0, "kept": 3, "applied": 2, "superseded": 1, "dropped": {}}


def test_a_presence_once_the_member_is_known_replaces_the_kept_one() -> None:
    held, guild = HeldPresences(), FakeGuild(1)
    observe(held, guild, 10, "online")
    member = guild.add(10)
    observe(held, guild, 10, "dnd")  # discord.py applies this one itself
    assert held.apply_guild(guild) == 0 and member.status == NOT_APPLIED


def test_join_applies_the_presence_that_came_first() -> None:
    held, guild = HeldPresences(), FakeGuild(1)
    observe(held, guild, 10, "idle")
    member = guild.add(10)
    assert held.apply_member(guild, member.id) and member.status == "idle"
    assert not held.apply_member(guild, member.id)


def test_a_new_guild_object_supersedes_what_was_kept_for_the_old_one() -> None:
    held, old = HeldPresences(), FakeGuild(1)
    observe(held, old, 10, "online")
    new = FakeGuild(1)  # a re-IDENTIFY: GUILD_CREATE brings fresher state than the kept presence
    member = new.add(10)
    assert held.apply_guild(new) == 0 and member.status == NOT_APPLIED
    assert held.superseded == 1 and held.held == 0


def test_drops_are_counted_by_reason() -> None:
    held, guild = HeldPresences(max_per_guild=2), FakeGuild(1)
    for user_id in (10, 11, 12):
        observe(held, guild, user_id, "online")
    observe(held, None, 13, "online")
    observe(held, FakeGuild(2, unavailable=True), 14, "online")
    held.forget_member(1, 11)
    held.forget_guild(1)
    assert held.dropped == {"bound": 1, "unknown_guild": 1, "guild_unavailable": 1, "guild_removed": 1}
    assert held.superseded == 1 and held.held == 0


def test_discord_py_still_offers_what_the_presence_keeping_relies_on() -> None:
    # If a discord.py upgrade removes these, presences of members being chunked are lost again.
    client = IngestClient(
        include_bots=False, relay_messages=False, shard_count=1, shard_ids=None, guild_ready_timeout=0.1
    )
    assert client._connection.raw_presence_flag is True  # enable_raw_presences took effect
    assert {"client_status", "activities"} <= set(discord.Member.__slots__)
    assert "_status" in discord.ClientStatus.__slots__  # Member.raw_status reads client_status
