"""The simulated Discord's state (the truth) and the Discord JSON payloads built from it.

Everything here is plain data and pure functions: no sockets, no clocks. The gateway and the control API
read and mutate a :class:`World`; tests compare discord.py's cache against :meth:`World.truth`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from shared.discord_rules import DEFAULT_ROLE_COLOR
from shared.errors import DzoneError
from simulator.payloads import (
    ChannelPayload,
    ChannelTruth,
    GuildCreatePayload,
    GuildPayload,
    GuildTruth,
    MemberPayload,
    MemberTruth,
    MessagePayload,
    OverwritePayload,
    PresencePayload,
    RolePayload,
    RoleTruth,
    ThreadPayload,
    UserPayload,
    WorldTruth,
)

DISCORD_EPOCH_MS = 1_420_070_400_000
STATUSES = ("online", "idle", "dnd", "offline")
MESSAGES_KEPT_PER_CHANNEL = 100  # GET /channels/{id}/messages history depth
MAX_MESSAGE_LENGTH = 2000  # Discord's own limit for a message's content
# Discord's permission bits the simulated world uses (the full table is Discord's, these are exact).
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
ADMINISTRATOR = 1 << 3
EVERYONE_PERMISSIONS = 1071698660929  # what Discord gives @everyone in a new guild (includes VIEW_CHANNEL)
# Channel types (Discord's numbers)
TEXT_CHANNEL = 0
CATEGORY_CHANNEL = 4
PUBLIC_THREAD = 11
CHANNEL_TYPES = (TEXT_CHANNEL, CATEGORY_CHANNEL, PUBLIC_THREAD)
OVERWRITE_ROLE = 0
OVERWRITE_MEMBER = 1


class SimulatorError(DzoneError):
    """Base class for a control request the simulator cannot honour (unknown id, bad value)."""


class UnknownObjectError(SimulatorError):
    """The request names a guild, member, role, channel or user the simulator does not have."""


class InvalidValueError(SimulatorError):
    """The request carries a value Discord would reject (bad status, colour, name length...)."""


class SnowflakeFactory:
    """Hands out increasing, unique Discord snowflakes from a deterministic start time.

    Consecutive ids differ in their timestamp part, so ``(id >> 22) % shard_count`` spreads guilds over
    shards the way Discord's own ids do.
    """

    def __init__(self, start_ms: int) -> None:
        self._next_ms = start_ms
        self._increment = 0

    def next(self) -> int:
        self._next_ms += 1
        self._increment = (self._increment + 1) & 0xFFF
        return ((self._next_ms - DISCORD_EPOCH_MS) << 22) | self._increment


def snowflake_time_iso(snowflake: int) -> str:
    """The ISO-8601 timestamp embedded in a snowflake (Discord's ``joined_at``/``timestamp`` format)."""
    import datetime

    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat()


@dataclass(slots=True)
class User:
    """A Discord account. Presence (status) is per user, as on Discord: it shows in every shared guild."""

    id: int
    username: str
    global_name: str | None
    bot: bool = False
    status: str = "offline"


@dataclass(slots=True)
class Role:
    id: int
    name: str
    color: int
    position: int
    hoist: bool = False
    managed: bool = False
    permissions: int = 0


@dataclass(frozen=True, slots=True)
class Overwrite:
    """One entry of a channel's ``permission_overwrites``: a role (type 0) or member (type 1) target."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0


@dataclass(slots=True)
class Channel:
    """A text channel (type 0), a category (4) or a public thread (11, ``parent_id`` = its channel)."""

    id: int
    name: str
    position: int
    topic: str | None = None
    type: int = TEXT_CHANNEL
    parent_id: int | None = None
    nsfw: bool = False
    overwrites: list[Overwrite] = field(default_factory=list)
    messages: deque[MessagePayload] = field(default_factory=lambda: deque(maxlen=MESSAGES_KEPT_PER_CHANNEL))

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD

    @property
    def takes_messages(self) -> bool:
        return self.type != CATEGORY_CHANNEL


@dataclass(slots=True)
class Member:
    user: User
    nick: str | None
    roles: list[int]
    joined_at: str


@dataclass(slots=True)
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    membership_version: int = 0  # bumped on every join and leave (cache key for member samplers)
    unavailable: bool = False  # in an outage: still the bot's, but the gateway sends nothing about it


def role_color(guild: Guild, member: Member) -> str:
    """The colour d-zone shows for a member: its highest coloured role as ``#rrggbb``, else ``#99aab5``.

    "Highest" follows discord.py's role order (position, then the lower id wins a tie); @everyone never
    counts. This is the reference the ingest's own computation is tested against.
    """
    best: Role | None = None
    for role_id in member.roles:
        role = guild.roles.get(role_id)
        if role is None or role.id == guild.id or role.color == 0:
            continue
        if best is None or (role.position, -role.id) > (best.position, -best.id):
            best = role
    return DEFAULT_ROLE_COLOR if best is None else f"#{best.color:06x}"


def display_name(member: Member) -> str:
    """Exactly discord.py's ``Member.display_name``: nick, else global name, else username."""
    return member.nick or member.user.global_name or member.user.username


# ---------------------------------------------------------------------------------------------------
# Discord JSON payloads (gateway v10 / REST v10 shapes, the fields discord.py 2.x reads)


def user_payload(user: User) -> UserPayload:
    return {
        "id": str(user.id),
        "username": user.username,
        "discriminator": "0",
        "global_name": user.global_name,
        "avatar": None,
        "bot": user.bot,
        "public_flags": 0,
    }


def role_payload(role: Role) -> RolePayload:
    return {
        "id": str(role.id),
        "name": role.name,
        "color": role.color,
        # discord.py >= 2.6 reads the colour from `colors.primary_color`; Discord sends both.
        "colors": {"primary_color": role.color, "secondary_color": None, "tertiary_color": None},
        "hoist": role.hoist,
        "icon": None,
        "unicode_emoji": None,
        "position": role.position,
        "permissions": str(role.permissions),
        "managed": role.managed,
        "mentionable": False,
        "flags": 0,
    }


def overwrite_payload(overwrite: Overwrite) -> OverwritePayload:
    return {
        "id": str(overwrite.id),
        "type": overwrite.type,
        "allow": str(overwrite.allow),
        "deny": str(overwrite.deny),
    }


def channel_payload(guild_id: int, channel: Channel) -> ChannelPayload:
    """A guild channel (text or category) as in GUILD_CREATE's ``channels`` and CHANNEL_* events."""
    payload: ChannelPayload = {
        "id": str(channel.id),
        "type": channel.type,
        "guild_id": str(guild_id),
        "name": channel.name,
        "position": channel.position,
        "permission_overwrites": [overwrite_payload(o) for o in channel.overwrites],
        "nsfw": channel.nsfw,
        "parent_id": None if channel.parent_id is None else str(channel.parent_id),
        "flags": 0,
    }
    if channel.type == TEXT_CHANNEL:
        payload["topic"] = channel.topic
        payload["rate_limit_per_user"] = 0
        payload["last_message_id"] = None
    return payload


def thread_payload(guild_id: int, thread: Channel, owner_id: int) -> ThreadPayload:
    """A public thread as in GUILD_CREATE's ``threads`` and THREAD_* events (no overwrites of its own)."""
    return {
        "id": str(thread.id),
        "type": thread.type,
        "guild_id": str(guild_id),
        "parent_id": str(thread.parent_id),
        "owner_id": str(owner_id),
        "name": thread.name,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "total_message_sent": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 10080,
            "archive_timestamp": snowflake_time_iso(thread.id),
            "locked": False,
            "create_timestamp": snowflake_time_iso(thread.id),
        },
    }


def channel_event_payload(guild: Guild, channel: Channel) -> ChannelPayload | ThreadPayload:
    """The payload Discord sends for this channel: thread shape for a thread, channel shape otherwise."""
    if channel.is_thread:
        return thread_payload(guild.id, channel, guild.owner_id)
    return channel_payload(guild.id, channel)


def member_payload(member: Member, *, with_user: bool = True) -> MemberPayload:
    payload: MemberPayload = {
        "nick": member.nick,
        "roles": [str(r) for r in member.roles],
        "joined_at": member.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "avatar": None,
        "communication_disabled_until": None,
    }
    if with_user:
        payload["user"] = user_payload(member.user)
    return payload


def presence_payload(guild_id: int, user: User) -> PresencePayload:
    status = user.status
    return {
        "user": {"id": str(user.id)},
        "guild_id": str(guild_id),
        "status": status,
        "activities": [],
        "client_status": {} if status == "offline" else {"desktop": status},
    }


def guild_create_payload(
    guild: Guild,
    *,
    bot_user_id: int,
    large_threshold: int,
    with_presences: bool,
    presence_threshold: int,
) -> GuildCreatePayload:
    """GUILD_CREATE as Discord sends it to a bot.

    With the presences intent, a small guild comes with all members; a large one (more than
    ``large_threshold`` members) with the bot and the members who are not offline, and ``large: true`` so
    the client requests the rest in chunks. Without the presences intent only the bot itself is included,
    and so it is for a guild over ``presence_threshold`` members (Discord's 75,000): the bot, members in
    voice (not simulated) and no presences but the bot's.
    """
    member_count = len(guild.members)
    large = member_count > large_threshold
    if not with_presences or member_count > presence_threshold:
        members = [m for m in guild.members.values() if m.user.id == bot_user_id]
    elif large:
        members = [
            m for m in guild.members.values() if m.user.status != "offline" or m.user.id == bot_user_id
        ]
    else:
        members = list(guild.members.values())
    presences = (
        [presence_payload(guild.id, m.user) for m in members if m.user.status != "offline"]
        if with_presences
        else []
    )
    return {
        **guild_update_payload(guild),
        "joined_at": guild.members[bot_user_id].joined_at if bot_user_id in guild.members else None,
        "large": large,
        "unavailable": False,
        "member_count": member_count,
        "voice_states": [],
        "members": [member_payload(m) for m in members],
        "channels": [channel_payload(guild.id, c) for c in guild.channels.values() if not c.is_thread],
        "threads": [
            thread_payload(guild.id, c, guild.owner_id) for c in guild.channels.values() if c.is_thread
        ],
        "presences": presences,
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def guild_update_payload(guild: Guild) -> GuildPayload:
    """The guild's own fields: GUILD_UPDATE, and the start of GUILD_CREATE."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 1,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "vanity_url_code": None,
        "description": None,
        "banner": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
    }


_USER_MENTION = re.compile(r"<@!?([0-9]{1,20})>")
_ROLE_MENTION = re.compile(r"<@&([0-9]{1,20})>")


def message_payload(
    guild: Guild, channel_id: int, message_id: int, member: Member, content: str
) -> MessagePayload:
    """MESSAGE_CREATE's payload; like Discord, ``mentions`` carries the mentioned members (with ``member``)."""
    guild_id = guild.id
    mentioned = [guild.members[int(i)] for i in dict.fromkeys(_USER_MENTION.findall(content))
                 if int(i) in guild.members]  # fmt: skip
    return {
        "id": str(message_id),
        "type": 0,
        "channel_id": str(channel_id),
        "guild_id": str(guild_id),
        "author": user_payload(member.user),
        "member": member_payload(member, with_user=False),
        "content": content,
        "timestamp": snowflake_time_iso(message_id),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [
            {**user_payload(m.user), "member": member_payload(m, with_user=False)} for m in mentioned
        ],
        "mention_roles": [i for i in dict.fromkeys(_ROLE_MENTION.findall(content)) if int(i) in guild.roles],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "flags": 0,
        "components": [],
    }


# ---------------------------------------------------------------------------------------------------


@dataclass
class World:
    """All guilds, users and OAuth tokens of the simulated Discord."""

    bot_user: User
    application_id: int
    ids: SnowflakeFactory
    guilds: dict[int, Guild] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    # user id -> ids of the guilds that user is a member of (presence fan-out, as on Discord)
    user_guilds: dict[int, set[int]] = field(default_factory=dict)
    oauth_tokens: dict[str, int] = field(default_factory=dict)

    # -- lookups that raise a clear error -----------------------------------------------------------

    def guild(self, guild_id: int) -> Guild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise UnknownObjectError(f"unknown guild {guild_id}") from None

    def member(self, guild_id: int, user_id: int) -> Member:
        guild = self.guild(guild_id)
        try:
            return guild.members[user_id]
        except KeyError:
            raise UnknownObjectError(f"user {user_id} is not a member of guild {guild_id}") from None

    def role(self, guild_id: int, role_id: int) -> Role:
        guild = self.guild(guild_id)
        try:
            return guild.roles[role_id]
        except KeyError:
            raise UnknownObjectError(f"unknown role {role_id} in guild {guild_id}") from None

    def channel(self, guild_id: int, channel_id: int) -> Channel:
        guild = self.guild(guild_id)
        try:
            return guild.channels[channel_id]
        except KeyError:
            raise UnknownObjectError(f"unknown channel {channel_id} in guild {guild_id}") from None

    def channel_owner(self, channel_id: int) -> Guild:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild
        raise UnknownObjectError(f"unknown channel {channel_id}")

    # -- membership bookkeeping ---------------------------------------------------------------------

    def add_user(self, user: User) -> None:
        self.users[user.id] = user
        self.user_guilds.setdefault(user.id, set())

    def join(self, guild: Guild, member: Member) -> None:
        guild.members[member.user.id] = member
        guild.membership_version += 1
        self.add_user(member.user)
        self.user_guilds[member.user.id].add(guild.id)

    def leave(self, guild: Guild, user_id: int) -> Member:
        member = guild.members.pop(user_id)
        guild.membership_version += 1
        self.user_guilds.get(user_id, set()).discard(guild.id)
        return member

    # -- the truth ----------------------------------------------------------------------------------

    def truth(self) -> WorldTruth:
        """The full current state as JSON-ready data (ids as strings, like Discord)."""
        return {
            "bot": {"user_id": str(self.bot_user.id), "username": self.bot_user.username},
            "application_id": str(self.application_id),
            "guilds": [guild_truth(g) for g in self.guilds.values()],
        }


def member_truth(guild: Guild, member: Member) -> MemberTruth:
    return {
        "user_id": str(member.user.id),
        "username": member.user.username,
        "global_name": member.user.global_name,
        "nick": member.nick,
        "display_name": display_name(member),
        "status": member.user.status,
        "role_color": role_color(guild, member),
        "roles": [str(r) for r in member.roles],
        "bot": member.user.bot,
    }


def guild_truth(guild: Guild) -> GuildTruth:
    return {
        "id": str(guild.id),
        "name": guild.name,
        "owner_id": str(guild.owner_id),
        "member_count": len(guild.members),
        "unavailable": guild.unavailable,
        "roles": [role_truth(r) for r in guild.roles.values()],
        "channels": [channel_truth(c) for c in guild.channels.values()],
        "members": [member_truth(guild, m) for m in guild.members.values()],
    }


def role_truth(role: Role) -> RoleTruth:
    return {
        "id": str(role.id),
        "name": role.name,
        "color": role.color,
        "position": role.position,
        "permissions": str(role.permissions),
    }


def channel_truth(channel: Channel) -> ChannelTruth:
    return {
        "id": str(channel.id),
        "name": channel.name,
        "position": channel.position,
        "type": channel.type,
        "parent_id": None if channel.parent_id is None else str(channel.parent_id),
        "nsfw": channel.nsfw,
        "permission_overwrites": [overwrite_payload(o) for o in channel.overwrites],
    }
