"""The JSON the simulator sends: Discord's payloads (gateway v10 / REST v10) and its own truth.

Discord's shapes are declared with the fields :mod:`simulator.world` fills (the ones discord.py 2.x reads);
the truth shapes are what ``GET /_sim/state`` answers and what tests compare discord.py's cache with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

# What a gateway dispatch or a REST answer carries: any of the payloads below (or a list of them).
Payload = Mapping[str, object]


# --- Discord's payloads --------------------------------------------------------------------------------
class UserPayload(TypedDict):
    id: str
    username: str
    discriminator: str
    global_name: str | None
    avatar: None
    bot: bool
    public_flags: int


class RoleColors(TypedDict):
    primary_color: int
    secondary_color: int | None
    tertiary_color: int | None


class RolePayload(TypedDict):
    id: str
    name: str
    color: int
    colors: RoleColors
    hoist: bool
    icon: None
    unicode_emoji: None
    position: int
    permissions: str  # a decimal bit set
    managed: bool
    mentionable: bool
    flags: int


class OverwritePayload(TypedDict):
    id: str
    type: int  # 0 role, 1 member
    allow: str
    deny: str


class ChannelPayload(TypedDict):
    """A text channel or a category (GUILD_CREATE's ``channels``, CHANNEL_*)."""

    id: str
    type: int
    guild_id: str
    name: str
    position: int
    permission_overwrites: list[OverwritePayload]
    nsfw: bool
    parent_id: str | None
    flags: int
    topic: NotRequired[str | None]  # text channels only
    rate_limit_per_user: NotRequired[int]
    last_message_id: NotRequired[str | None]


class ThreadMetadata(TypedDict):
    archived: bool
    auto_archive_duration: int
    archive_timestamp: str
    locked: bool
    create_timestamp: str


class ThreadPayload(TypedDict):
    """A public thread (GUILD_CREATE's ``threads``, THREAD_*)."""

    id: str
    type: int
    guild_id: str
    parent_id: str
    owner_id: str
    name: str
    last_message_id: None
    rate_limit_per_user: int
    message_count: int
    member_count: int
    total_message_sent: int
    flags: int
    thread_metadata: ThreadMetadata
    newly_created: NotRequired[bool]  # THREAD_CREATE only


class MemberPayload(TypedDict):
    nick: str | None
    roles: list[str]
    joined_at: str
    premium_since: None
    deaf: bool
    mute: bool
    pending: bool
    flags: int
    avatar: None
    communication_disabled_until: None
    user: NotRequired[UserPayload]  # left out where the user is beside it (a message's author)


class PartialUser(TypedDict):
    id: str


class PresencePayload(TypedDict):
    user: PartialUser
    guild_id: str
    status: str
    activities: list[object]
    client_status: dict[str, str]


class MembersChunkPayload(TypedDict):
    guild_id: str
    members: list[MemberPayload]
    chunk_index: int
    chunk_count: int
    presences: NotRequired[list[PresencePayload]]  # when asked for and the session has the intent
    nonce: NotRequired[object]  # echoed as the request sent it
    not_found: NotRequired[list[str]]


class GuildPayload(TypedDict):
    """A guild's own fields (GUILD_UPDATE; GUILD_CREATE adds its contents)."""

    id: str
    name: str
    icon: None
    splash: None
    discovery_splash: None
    owner_id: str
    afk_channel_id: None
    afk_timeout: int
    verification_level: int
    default_message_notifications: int
    explicit_content_filter: int
    roles: list[RolePayload]
    emojis: list[object]
    stickers: list[object]
    features: list[str]
    mfa_level: int
    system_channel_id: None
    system_channel_flags: int
    rules_channel_id: None
    vanity_url_code: None
    description: None
    banner: None
    premium_tier: int
    premium_subscription_count: int
    preferred_locale: str
    nsfw_level: int
    premium_progress_bar_enabled: bool


class GuildCreatePayload(GuildPayload):
    joined_at: str | None
    large: bool
    unavailable: NotRequired[bool]  # left out when the bot was just added (discord.py: guild_join)
    member_count: int
    voice_states: list[object]
    members: list[MemberPayload]
    channels: list[ChannelPayload]
    threads: list[ThreadPayload]
    presences: list[PresencePayload]
    stage_instances: list[object]
    guild_scheduled_events: list[object]
    soundboard_sounds: list[object]


class MentionPayload(UserPayload):
    member: MemberPayload


class MessagePayload(TypedDict):
    """MESSAGE_CREATE, and a message of ``GET /channels/{id}/messages``."""

    id: str
    type: int
    channel_id: str
    guild_id: str
    author: UserPayload
    member: MemberPayload
    content: str
    timestamp: str
    edited_timestamp: None
    tts: bool
    mention_everyone: bool
    mentions: list[MentionPayload]
    mention_roles: list[str]
    attachments: list[object]
    embeds: list[object]
    pinned: bool
    flags: int
    components: list[object]


# --- the truth (GET /_sim/state) -----------------------------------------------------------------------
class MemberTruth(TypedDict):
    user_id: str
    username: str
    global_name: str | None
    nick: str | None
    display_name: str
    status: str
    role_color: str  # "#rrggbb", the colour d-zone must show
    roles: list[str]
    bot: bool


class RoleTruth(TypedDict):
    id: str
    name: str
    color: int
    position: int
    permissions: str


class ChannelTruth(TypedDict):
    id: str
    name: str
    position: int
    type: int
    parent_id: str | None
    nsfw: bool
    permission_overwrites: list[OverwritePayload]


class GuildTruth(TypedDict):
    id: str
    name: str
    owner_id: str
    member_count: int
    unavailable: bool
    roles: list[RoleTruth]
    channels: list[ChannelTruth]
    members: list[MemberTruth]


class BotTruth(TypedDict):
    user_id: str
    username: str


class WorldTruth(TypedDict):
    bot: BotTruth
    application_id: str
    guilds: list[GuildTruth]


class SimState(WorldTruth):
    """``GET /_sim/state``: the truth and whether the scenario is paused."""

    paused: bool


class AddedGuild(TypedDict):
    """The answer of ``faults/bot-added``."""

    guild_id: str
    name: str
    member_count: int


class LimitsView(TypedDict):
    """Discord's limits of a running simulator: the answer of ``POST /_sim/limits``."""

    presence_threshold: int
    member_request_window_s: float
    session_start_limit: dict[str, int]  # total, remaining, reset_after (ms), max_concurrency
    identify_interval_s: float
    token_reset: bool
