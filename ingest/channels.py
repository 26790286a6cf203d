"""Which channels the public could read, and chat markup made readable: plain rules, thin discord.py adapters.

A channel is *public* when a member with no roles (only @everyone) could view it on Discord and it is not
NSFW. Only @everyone's permissions count, so the rule needs the guild's base permissions (the @everyone
role's) and the channel's overwrite for @everyone; overwrites for other roles or members never change
what @everyone sees. A category's overwrites reach its channels the way Discord applies them: a synced
child carries a copy, so the child's own overwrites are the ones that count. Threads follow their parent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from ingest.mapping import clean_text

if TYPE_CHECKING:
    import discord

VIEW_CHANNEL = 1 << 10
ADMINISTRATOR = 1 << 3
OVERWRITE_ROLE = 0  # Discord's overwrite ``type``: 0 role, 1 member
OVERWRITE_MEMBER = 1
CHANNEL_NAME_MAX_CHARS = 100  # discord_channels.name is VARCHAR(100)


class Overwrite(NamedTuple):
    """One permission overwrite of a channel, as Discord sends it (bit sets as integers)."""

    target_id: int
    target_type: int  # OVERWRITE_ROLE or OVERWRITE_MEMBER
    allow: int
    deny: int


class ChannelRow(NamedTuple):
    """One discord_channels row as the ingest writes it (``relay`` is the operator's, never written)."""

    server_id: str
    channel_id: str
    name: str
    public: bool


def everyone_can_view(guild_id: int, everyone_permissions: int, overwrites: Iterable[Overwrite]) -> bool:
    """Whether @everyone has VIEW_CHANNEL in a channel, by Discord's permission rules.

    Base permissions are the @everyone role's; ADMINISTRATOR grants everything and ignores overwrites.
    Then the channel's overwrite for the @everyone role (the role whose id is the guild's) applies: its
    deny bits are removed, then its allow bits added. Overwrites of other roles and of members do not
    apply to @everyone.
    """
    permissions = everyone_permissions
    if permissions & ADMINISTRATOR:
        return True
    for overwrite in overwrites:
        if overwrite.target_type == OVERWRITE_ROLE and overwrite.target_id == guild_id:
            permissions = (permissions & ~overwrite.deny) | overwrite.allow
    return bool(permissions & VIEW_CHANNEL)


def is_public(guild_id: int, everyone_permissions: int, overwrites: Iterable[Overwrite], nsfw: bool) -> bool:
    """The relay rule's default: the public could view the channel and it is not age-restricted."""
    return not nsfw and everyone_can_view(guild_id, everyone_permissions, overwrites)


# --- readable chat -----------------------------------------------------------------------------------

UNKNOWN_USER = "@unknown-user"
UNKNOWN_ROLE = "@unknown-role"
UNKNOWN_CHANNEL = "#unknown-channel"
_MARKUP = re.compile(
    r"<@!?(?P<user>[0-9]{1,20})>"
    r"|<@&(?P<role>[0-9]{1,20})>"
    r"|<#(?P<channel>[0-9]{1,20})>"
    r"|<a?:(?P<emoji>[A-Za-z0-9_~]{1,32}):[0-9]{1,20}>"
)

NameLookup = Callable[[int], str | None]


def readable_text(text: str, *, user: NameLookup, role: NameLookup, channel: NameLookup) -> str:
    """Discord's mention and custom-emoji markup as a viewer would read it; everything else unchanged.

    ``<@id>``/``<@!id>`` -> ``@display name``, ``<@&id>`` -> ``@role name``, ``<#id>`` -> ``#channel``,
    ``<:name:id>``/``<a:name:id>`` -> ``:name:``. A lookup answering None gives a placeholder: the text
    never shows raw ids. ``channel`` should answer None for channels the public cannot see.
    """

    def replace(match: re.Match[str]) -> str:
        if (user_id := match["user"]) is not None:
            name = user(int(user_id))
            return UNKNOWN_USER if name is None else f"@{name}"
        if (role_id := match["role"]) is not None:
            name = role(int(role_id))
            return UNKNOWN_ROLE if name is None else f"@{name}"
        if (channel_id := match["channel"]) is not None:
            name = channel(int(channel_id))
            return UNKNOWN_CHANNEL if name is None else f"#{name}"
        return f":{match['emoji']}:"

    return _MARKUP.sub(replace, text)


# --- discord.py adapters -------------------------------------------------------------------------


def _overwrites(channel: discord.abc.GuildChannel) -> list[Overwrite]:
    import discord

    overwrites = []
    for target, overwrite in channel.overwrites.items():
        allow, deny = overwrite.pair()
        is_role = isinstance(target, discord.Role) or getattr(target, "type", None) is discord.Role
        overwrites.append(
            Overwrite(target.id, OVERWRITE_ROLE if is_role else OVERWRITE_MEMBER, allow.value, deny.value)
        )
    return overwrites


def channel_is_public(channel: discord.abc.GuildChannel) -> bool:
    """The rule for a discord.py channel (from the cache: the guild's @everyone role and the overwrites)."""
    guild = channel.guild
    everyone = guild.get_role(guild.id)  # missing from the cache: assume no base permissions
    base = everyone.permissions.value if everyone is not None else 0
    nsfw = bool(getattr(channel, "nsfw", False))
    return is_public(guild.id, base, _overwrites(channel), nsfw)


def channel_rows(guild: discord.Guild) -> list[ChannelRow]:
    """Every channel of the guild that can carry chat (categories and threads are not rows)."""
    import discord

    server_id = str(guild.id)
    return [
        ChannelRow(
            server_id,
            str(channel.id),
            clean_text(channel.name, CHANNEL_NAME_MAX_CHARS) or str(channel.id),
            channel_is_public(channel),
        )
        for channel in guild.channels
        if not isinstance(channel, discord.CategoryChannel)
    ]


def relay_channel_id(
    channel: discord.abc.Messageable | discord.abc.GuildChannel | discord.Thread,
) -> int | None:
    """The id of the channel whose row decides whether a message is relayed (and that the frame shows).

    A public thread's messages count as its parent channel's; a private thread's are never relayed (None).
    """
    import discord

    if isinstance(channel, discord.Thread):
        return None if channel.type is discord.ChannelType.private_thread else channel.parent_id
    return getattr(channel, "id", None)


def readable_message(message: discord.Message, member_name: NameLookup | None = None) -> str:
    """The message's content with mentions and custom emoji resolved (members by ``member_name``, the
    ingest's member table, else discord.py's cache and the message's mentions; roles and channels from
    discord.py's cache)."""
    guild = message.guild
    assert guild is not None
    mentioned = {user.id: user.display_name for user in message.mentions}

    def user(user_id: int) -> str | None:
        name = member_name(user_id) if member_name is not None else None
        if name is not None:
            return name
        member = guild.get_member(user_id)
        return member.display_name if member is not None else mentioned.get(user_id)

    def role(role_id: int) -> str | None:
        found = guild.get_role(role_id)
        return None if found is None else found.name

    def channel(channel_id: int) -> str | None:
        found = guild.get_channel_or_thread(channel_id)
        rule_id = relay_channel_id(found) if found is not None else None
        rule_channel = guild.get_channel(rule_id) if rule_id is not None else None
        if found is None or rule_channel is None or not channel_is_public(rule_channel):
            return None  # the name of a channel the public cannot see is not shown either
        return found.name

    return readable_text(message.content, user=user, role=role, channel=channel)
