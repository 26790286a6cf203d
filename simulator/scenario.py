"""The deterministic scenario: the initial world for a seed, and the stream of random changes.

The world and the sequence of changes depend only on the seed (and sizes); wall-clock time only decides
when the next batch is due. The status mix follows real servers: most members offline.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from simulator.config import SimConfig
from simulator.names import CHANNEL_NAMES, GUILD_NAMES, ROLE_COLORS, ROLE_NAMES, NameMaker
from simulator.world import (
    CATEGORY_CHANNEL,
    EVERYONE_PERMISSIONS,
    OVERWRITE_ROLE,
    PUBLIC_THREAD,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    Channel,
    Guild,
    Member,
    Overwrite,
    Role,
    SnowflakeFactory,
    User,
    World,
    snowflake_time_iso,
)

# Share of members per status on a typical server (most offline); presence changes keep this mix.
STATUS_MIX: tuple[tuple[str, float], ...] = (
    ("offline", 0.72),
    ("online", 0.16),
    ("idle", 0.07),
    ("dnd", 0.05),
)
BOT_SHARE = 0.03  # share of members that are bots
SHARED_USER_SHARE = 0.05  # share of members who are also members of another guild
NICK_SHARE = 0.12
RESTRICTED_CHAT_SHARE = 0.1  # share of the scenario's messages posted in channels with overwrites or NSFW
START_MS = 1_640_995_200_000  # 2022-01-01: ids look like real ones and sort by creation
BOT_USERNAME = "dzone-sim"


def _draw_status(rng: random.Random) -> str:
    x = rng.random()
    for status, share in STATUS_MIX:
        x -= share
        if x < 0:
            return status
    return STATUS_MIX[0][0]


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw; the normal approximation above 50 keeps it O(1) at high rates."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


class WorldBuilder:
    """Creates guilds, roles, channels and members from one seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.names = NameMaker(self.rng)
        self.ids = SnowflakeFactory(START_MS + (seed % 1000) * 86_400_000)

    def new_user(self, *, bot: bool = False) -> User:
        if bot:
            return User(
                id=self.ids.next(), username=self.names.bot(), global_name=None, bot=True, status="online"
            )
        username, global_name = self.names.human()
        return User(
            id=self.ids.next(), username=username, global_name=global_name, status=_draw_status(self.rng)
        )

    def new_member(self, guild: Guild, user: User) -> Member:
        rng = self.rng
        assignable = [r for r in guild.roles.values() if r.id != guild.id and not r.managed]
        count = min(len(assignable), rng.choice((0, 0, 1, 1, 1, 2, 3)))
        roles = sorted(r.id for r in rng.sample(assignable, count))
        nick = self.names.nick() if rng.random() < NICK_SHARE else None
        return Member(user=user, nick=nick, roles=roles, joined_at=snowflake_time_iso(self.ids.next()))

    def build(self, config: SimConfig) -> World:
        bot_user = User(
            id=self.ids.next(), username=BOT_USERNAME, global_name=None, bot=True, status="online"
        )
        world = World(bot_user=bot_user, application_id=bot_user.id, ids=self.ids)
        world.add_user(bot_user)
        for index, size in enumerate(config.sizes()):
            self._add_guild(world, index, size)
        # After every guild and member: the ids (and shards) of guilds and members stay what they were
        # before channel privacy existed, and no RNG draw is spent, so a seed's world is unchanged.
        for guild in world.guilds.values():
            self._add_private_channels(guild)
        return world

    def add_guild(self, world: World, size: int) -> Guild:
        """A new guild of ``size`` members (the bot included), built like the ones at start."""
        guild = self._add_guild(world, len(world.guilds), size)
        self._add_private_channels(guild)
        return guild

    def _add_private_channels(self, guild: Guild) -> None:
        """The channels that test the relay rule, one of each kind real servers have.

        A staff channel @everyone cannot view (a staff role can), a private category with a synced
        child, an NSFW channel, a public channel with a deny for another role only, and a public thread
        in the first ordinary channel and one in the staff channel.
        """
        everyone = guild.id
        ranked = sorted(
            (r for r in guild.roles.values() if r.id != everyone and not r.managed), key=lambda r: r.position
        )
        staff_role, other_role = ranked[-1].id, ranked[0].id
        hidden = [
            Overwrite(everyone, OVERWRITE_ROLE, deny=VIEW_CHANNEL),
            Overwrite(staff_role, OVERWRITE_ROLE, allow=VIEW_CHANNEL),
        ]
        position = len(guild.channels)
        first_public = next(iter(guild.channels.values()))
        staff = Channel(self.ids.next(), "staff-room", position, overwrites=list(hidden))
        category = Channel(
            self.ids.next(), "Moderators", position + 1, type=CATEGORY_CHANNEL, overwrites=list(hidden)
        )
        synced = Channel(
            self.ids.next(), "mod-log", position + 2, parent_id=category.id, overwrites=list(hidden)
        )
        nsfw = Channel(self.ids.next(), "after-dark", position + 3, nsfw=True)
        welcome = Channel(
            self.ids.next(),
            "welcome",
            position + 4,
            overwrites=[
                Overwrite(everyone, OVERWRITE_ROLE, deny=SEND_MESSAGES),
                Overwrite(other_role, OVERWRITE_ROLE, deny=VIEW_CHANNEL),
            ],
        )
        public_thread = Channel(
            self.ids.next(), "thread-chat", 0, type=PUBLIC_THREAD, parent_id=first_public.id
        )
        staff_thread = Channel(self.ids.next(), "staff-thread", 0, type=PUBLIC_THREAD, parent_id=staff.id)
        for channel in (staff, category, synced, nsfw, welcome, public_thread, staff_thread):
            guild.channels[channel.id] = channel

    def _add_guild(self, world: World, index: int, size: int) -> Guild:
        rng = self.rng
        guild_id = self.ids.next()
        name = GUILD_NAMES[index % len(GUILD_NAMES)]
        if index >= len(GUILD_NAMES):
            name = f"{name} #{index // len(GUILD_NAMES) + 1}"
        guild = Guild(id=guild_id, name=name, owner_id=0)
        guild.roles[guild_id] = Role(
            id=guild_id, name="@everyone", color=0, position=0, permissions=EVERYONE_PERMISSIONS
        )
        role_names = rng.sample(ROLE_NAMES, rng.randint(3, 8))
        for position, role_name in enumerate(role_names, start=1):
            # about one role in four has no colour, like real servers' permission-only roles
            color = rng.choice(ROLE_COLORS) if rng.random() < 0.75 else 0
            role = Role(
                id=self.ids.next(), name=role_name, color=color, position=position, hoist=rng.random() < 0.3
            )
            guild.roles[role.id] = role
        bot_role = Role(
            id=self.ids.next(), name=BOT_USERNAME, color=0, position=len(role_names) + 1, managed=True
        )
        guild.roles[bot_role.id] = bot_role
        for position, channel_name in enumerate(rng.sample(CHANNEL_NAMES, rng.randint(3, 7))):
            channel = Channel(id=self.ids.next(), name=channel_name, position=position)
            guild.channels[channel.id] = channel

        world.join(guild, Member(world.bot_user, None, [bot_role.id], snowflake_time_iso(self.ids.next())))
        # members of earlier guilds who may also join this one (a bounded pool keeps building O(size))
        earlier = [u for u in list(world.users.values())[-2000:] if u.id != world.bot_user.id]
        for _ in range(size - 1):
            user = None
            if earlier and rng.random() < SHARED_USER_SHARE:
                candidate = rng.choice(earlier)
                if candidate.id not in guild.members:
                    user = candidate
            if user is None:
                user = self.new_user(bot=rng.random() < BOT_SHARE)
            world.join(guild, self.new_member(guild, user))
        humans = [m.user.id for m in guild.members.values() if not m.user.bot]
        guild.owner_id = humans[0] if humans else world.bot_user.id
        world.guilds[guild_id] = guild
        return guild


@dataclass(frozen=True, slots=True)
class PresenceChange:
    guild_id: int
    user_id: int
    status: str


@dataclass(frozen=True, slots=True)
class MessagePost:
    guild_id: int
    channel_id: int
    user_id: int
    content: str


@dataclass(frozen=True, slots=True)
class MemberJoin:
    guild_id: int


@dataclass(frozen=True, slots=True)
class MemberLeave:
    guild_id: int
    user_id: int


@dataclass(frozen=True, slots=True)
class NickChange:
    guild_id: int
    user_id: int
    nick: str | None


Change = PresenceChange | MessagePost | MemberJoin | MemberLeave | NickChange


class Traffic:
    """Draws the random changes of one tick from the scenario's own seeded RNG.

    Members are picked uniformly over all guild memberships (big guilds get most events). A presence
    change draws the new status from STATUS_MIX and retries on "no change", which keeps the mix stationary.
    """

    def __init__(self, config: SimConfig, world: World, builder: WorldBuilder) -> None:
        self.config = config
        self.world = world
        self.rng = random.Random(config.seed * 7919 + 1)
        self.builder = builder
        self._keys: dict[int, tuple[int, list[int]]] = {}
        self._weights: tuple[list[Guild], list[int]] | None = None

    def _pick_guild(self) -> Guild | None:
        """A guild, weighted by member count (weights cached per tick, see :meth:`tick`)."""
        if self._weights is None:
            guilds = list(self.world.guilds.values())
            self._weights = (guilds, list(itertools.accumulate(len(g.members) for g in guilds)))
        guilds, cumulative = self._weights
        if not guilds:
            return None
        if len(guilds) == 1:
            return guilds[0]
        return self.rng.choices(guilds, cum_weights=cumulative)[0]

    def _pick_member(self, guild: Guild, *, humans_only: bool = False) -> Member | None:
        """A random member other than the simulator's bot (None when the guild has no one else)."""
        members = guild.members
        if len(members) <= 1:
            return None
        keys = self._member_keys(guild)
        for _ in range(20):
            member = members.get(self.rng.choice(keys))
            if member is None or member.user.id == self.world.bot_user.id:
                continue
            if humans_only and member.user.bot:
                continue
            return member
        return None

    def _member_keys(self, guild: Guild) -> list[int]:
        """Member ids of a guild as a list (random.choice needs one), rebuilt when membership changes."""
        cached = self._keys.get(guild.id)
        if cached is None or cached[0] != guild.membership_version:
            cached = (guild.membership_version, list(guild.members))
            self._keys[guild.id] = cached
        return cached[1]

    def presence_changes(self, count: int) -> list[PresenceChange]:
        changes: list[PresenceChange] = []
        attempts = 0
        while len(changes) < count and attempts < count * 10 + 10:
            attempts += 1
            guild = self._pick_guild()
            if guild is None:
                break
            member = self._pick_member(guild)
            if member is None:
                continue
            status = _draw_status(self.rng)
            if status == member.user.status or member.user.bot:
                continue
            changes.append(PresenceChange(guild.id, member.user.id, status))
        return changes

    def messages(self, count: int) -> list[MessagePost]:
        posts: list[MessagePost] = []
        for _ in range(count):
            guild = self._pick_guild()
            if guild is None or not guild.channels:
                break
            member = self._pick_member(guild, humans_only=True)
            if member is None:
                continue
            channel_id = self._pick_channel(guild)
            if channel_id is None:
                continue
            posts.append(MessagePost(guild.id, channel_id, member.user.id, self.builder.names.message()))
        return posts

    def _pick_channel(self, guild: Guild) -> int | None:
        """A channel that takes messages: mostly ordinary ones, sometimes one with overwrites or NSFW."""
        ordinary: list[int] = []
        restricted: list[int] = []
        for channel in guild.channels.values():
            if channel.takes_messages:
                plain = not channel.overwrites and not channel.nsfw and not channel.is_thread
                (ordinary if plain else restricted).append(channel.id)
        if restricted and (not ordinary or self.rng.random() < RESTRICTED_CHAT_SHARE):
            return self.rng.choice(restricted)
        return self.rng.choice(ordinary) if ordinary else None

    def churn(self, count: int) -> list[Change]:
        changes: list[Change] = []
        for _ in range(count):
            guild = self._pick_guild()
            if guild is None:
                break
            x = self.rng.random()
            if x < 0.45:
                changes.append(MemberJoin(guild.id))
                continue
            member = self._pick_member(guild)
            if member is None:
                changes.append(MemberJoin(guild.id))
            elif x < 0.9:
                changes.append(MemberLeave(guild.id, member.user.id))
            else:
                nick = self.builder.names.nick() if member.nick is None else None
                changes.append(NickChange(guild.id, member.user.id, nick))
        return changes

    def tick(self, seconds: float) -> list[Change]:
        """The changes due in the next ``seconds`` of simulated time."""
        cfg = self.config
        self._weights = None  # guild sizes may have changed since the last tick
        changes: list[Change] = []
        changes.extend(self.presence_changes(poisson(self.rng, cfg.presence_rate * seconds)))
        changes.extend(self.messages(poisson(self.rng, cfg.message_rate * seconds)))
        changes.extend(self.churn(poisson(self.rng, cfg.churn * seconds)))
        return changes
