"""Changes to the simulated Discord: each one updates the truth and queues its gateway event in one step.

Used by the scenario, the in-process :class:`~simulator.server.Simulator` API and the ``/_sim/`` control
routes alike, so an injected change and a random one are indistinguishable to a client.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from typing import Final

from simulator.gateway import (
    INTENT_GUILDS,
    INTENT_MEMBERS,
    INTENT_MESSAGE_CONTENT,
    INTENT_MESSAGES,
    INTENT_PRESENCES,
    GatewayHub,
    Session,
)
from simulator.payloads import AddedGuild, ChannelTruth, MemberTruth, MessagePayload, RoleTruth
from simulator.scenario import WorldBuilder
from simulator.world import (
    CATEGORY_CHANNEL,
    CHANNEL_TYPES,
    MAX_MESSAGE_LENGTH,
    OVERWRITE_MEMBER,
    OVERWRITE_ROLE,
    PUBLIC_THREAD,
    STATUSES,
    TEXT_CHANNEL,
    Channel,
    InvalidValueError,
    Member,
    Overwrite,
    Role,
    User,
    World,
    channel_event_payload,
    channel_payload,
    channel_truth,
    guild_update_payload,
    member_payload,
    member_truth,
    message_payload,
    presence_payload,
    role_payload,
    role_truth,
    snowflake_time_iso,
    thread_payload,
    user_payload,
)

MAX_NAME_LENGTH = 32  # usernames, global names and nicks
MAX_ADDED_GUILD_SIZE = 100_000


class Unset(enum.Enum):
    """ "Leave this field as it is", for the update operations (None is a value: no nick)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


def _text(value: object, what: str, *, low: int, high: int) -> str:
    if not isinstance(value, str) or not low <= len(value.strip()) <= high:
        raise InvalidValueError(f"{what} must be a string of {low}-{high} characters")
    return value


class Engine:
    """The one place where the world changes."""

    def __init__(self, world: World, hub: GatewayHub, builder: WorldBuilder) -> None:
        self.world = world
        self.hub = hub
        self.builder = builder

    # -- presence and messages ----------------------------------------------------------------------

    def set_presence(self, guild_id: int, user_id: int, status: str) -> None:
        """Set a member's status; like Discord, every guild the user shares with the bot gets the update."""
        if status not in STATUSES:
            raise InvalidValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        user = self.world.member(guild_id, user_id).user
        user.status = status
        for shared_guild_id in sorted(self.world.user_guilds.get(user_id, ())):
            if self.hub.listening(shared_guild_id, INTENT_PRESENCES):
                self.hub.dispatch(
                    "PRESENCE_UPDATE",
                    shared_guild_id,
                    INTENT_PRESENCES,
                    presence_payload(shared_guild_id, user),
                )

    def send_message(self, guild_id: int, channel_id: int, user_id: int, content: str) -> MessagePayload:
        """Post a message as a member; sessions without the message-content intent get empty content."""
        content = _text(content, "content", low=1, high=MAX_MESSAGE_LENGTH)
        channel = self.world.channel(guild_id, channel_id)
        if not channel.takes_messages:
            raise InvalidValueError(f"channel {channel_id} is a category: it takes no messages")
        member = self.world.member(guild_id, user_id)
        payload = message_payload(
            self.world.guild(guild_id), channel_id, self.world.ids.next(), member, content
        )
        channel.messages.append(payload)

        def without_content(session: Session) -> MessagePayload | None:
            if session.has(INTENT_MESSAGE_CONTENT):
                return None
            return {**payload, "content": ""}

        self.hub.dispatch("MESSAGE_CREATE", guild_id, INTENT_MESSAGES, payload, variant=without_content)
        return payload

    # -- membership ---------------------------------------------------------------------------------

    def add_member(
        self,
        guild_id: int,
        *,
        user_id: int | None = None,
        username: str | None = None,
        global_name: str | None = None,
        nick: str | None = None,
        bot: bool = False,
        status: str | None = None,
        roles: Sequence[int] = (),
    ) -> MemberTruth:
        """A user joins (a new account, or an existing one by ``user_id``): GUILD_MEMBER_ADD (+ presence)."""
        guild = self.world.guild(guild_id)
        if status is not None and status not in STATUSES:
            raise InvalidValueError(f"status must be one of {', '.join(STATUSES)}")
        for role_id in roles:
            self.world.role(guild_id, role_id)
        if nick is not None:
            _text(nick, "nick", low=1, high=MAX_NAME_LENGTH)
        if user_id is not None:
            user = self.world.users.get(user_id)
            if user is None:
                raise InvalidValueError(f"unknown user {user_id}")
            if user_id in guild.members:
                raise InvalidValueError(f"user {user_id} is already a member of guild {guild_id}")
        else:
            user = self.builder.new_user(bot=bot)
            if username is not None:
                user.username = _text(username, "username", low=2, high=MAX_NAME_LENGTH)
            if global_name is not None:
                user.global_name = _text(global_name, "global_name", low=1, high=MAX_NAME_LENGTH)
        if status is not None:
            user.status = status
        member = Member(
            user=user,
            nick=nick,
            roles=sorted(set(roles)),
            joined_at=snowflake_time_iso(self.world.ids.next()),
        )
        self.world.join(guild, member)
        self.hub.dispatch(
            "GUILD_MEMBER_ADD",
            guild_id,
            INTENT_MEMBERS,
            {**member_payload(member), "guild_id": str(guild_id)},
        )
        if user.status != "offline":
            self.hub.dispatch("PRESENCE_UPDATE", guild_id, INTENT_PRESENCES, presence_payload(guild_id, user))
        return member_truth(guild, member)

    def remove_member(self, guild_id: int, user_id: int) -> None:
        """A member leaves (or is kicked): GUILD_MEMBER_REMOVE."""
        guild = self.world.guild(guild_id)
        if user_id == self.world.bot_user.id:
            raise InvalidValueError("the bot leaves a guild with remove_guild, not remove_member")
        member = self.world.member(guild_id, user_id)
        self.world.leave(guild, user_id)
        self.hub.dispatch(
            "GUILD_MEMBER_REMOVE",
            guild_id,
            INTENT_MEMBERS,
            {"guild_id": str(guild_id), "user": user_payload(member.user)},
        )

    def update_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        nick: str | Unset | None = UNSET,
        roles: Sequence[int] | Unset = UNSET,
    ) -> MemberTruth:
        """Change a member's nick and/or roles: GUILD_MEMBER_UPDATE (the full member, as Discord sends it)."""
        guild = self.world.guild(guild_id)
        member = self.world.member(guild_id, user_id)
        if nick is not UNSET and nick is not None:
            _text(nick, "nick", low=1, high=MAX_NAME_LENGTH)
        if roles is not UNSET:
            for role_id in roles:
                self.world.role(guild_id, role_id)
        if nick is not UNSET:
            member.nick = nick
        if roles is not UNSET:
            member.roles = sorted(set(roles))
        self.hub.dispatch(
            "GUILD_MEMBER_UPDATE",
            guild_id,
            INTENT_MEMBERS,
            {**member_payload(member), "guild_id": str(guild_id)},
        )
        return member_truth(guild, member)

    # -- roles and guilds ---------------------------------------------------------------------------

    def set_role_color(self, guild_id: int, role_id: int, color: int) -> None:
        if not isinstance(color, int) or isinstance(color, bool) or not 0 <= color <= 0xFFFFFF:
            raise InvalidValueError("color must be an integer 0..0xffffff")
        role = self.world.role(guild_id, role_id)
        role.color = color
        self.hub.dispatch(
            "GUILD_ROLE_UPDATE",
            guild_id,
            INTENT_GUILDS,
            {"guild_id": str(guild_id), "role": role_payload(role)},
        )

    def create_role(self, guild_id: int, name: str, color: int = 0) -> RoleTruth:
        """A new role above the others (no permissions): GUILD_ROLE_CREATE; answers its truth entry."""
        guild = self.world.guild(guild_id)
        name = _text(name, "role name", low=1, high=100)
        if not isinstance(color, int) or isinstance(color, bool) or not 0 <= color <= 0xFFFFFF:
            raise InvalidValueError("color must be an integer 0..0xffffff")
        position = max((r.position for r in guild.roles.values()), default=0) + 1
        role = Role(id=self.world.ids.next(), name=name, color=color, position=position)
        guild.roles[role.id] = role
        self.hub.dispatch(
            "GUILD_ROLE_CREATE",
            guild_id,
            INTENT_GUILDS,
            {"guild_id": str(guild_id), "role": role_payload(role)},
        )
        return role_truth(role)

    def rename_role(self, guild_id: int, role_id: int, name: str) -> None:
        role = self.world.role(guild_id, role_id)
        role.name = _text(name, "role name", low=1, high=100)
        self.hub.dispatch(
            "GUILD_ROLE_UPDATE",
            guild_id,
            INTENT_GUILDS,
            {"guild_id": str(guild_id), "role": role_payload(role)},
        )

    def delete_role(self, guild_id: int, role_id: int) -> None:
        """GUILD_ROLE_DELETE; its holders lose it silently, as on Discord (no GUILD_MEMBER_UPDATE)."""
        guild = self.world.guild(guild_id)
        self.world.role(guild_id, role_id)
        if role_id == guild_id:
            raise InvalidValueError("the @everyone role cannot be deleted")
        del guild.roles[role_id]
        for member in guild.members.values():
            if role_id in member.roles:
                member.roles.remove(role_id)
        self.hub.dispatch(
            "GUILD_ROLE_DELETE", guild_id, INTENT_GUILDS, {"guild_id": str(guild_id), "role_id": str(role_id)}
        )

    def set_role_permissions(self, guild_id: int, role_id: int, permissions: int) -> None:
        """Change a role's permission bits (the @everyone role's are the guild's base): GUILD_ROLE_UPDATE."""
        if isinstance(permissions, bool) or not isinstance(permissions, int) or permissions < 0:
            raise InvalidValueError("permissions must be a non-negative integer")
        role = self.world.role(guild_id, role_id)
        role.permissions = permissions
        self.hub.dispatch(
            "GUILD_ROLE_UPDATE",
            guild_id,
            INTENT_GUILDS,
            {"guild_id": str(guild_id), "role": role_payload(role)},
        )

    # -- channels -----------------------------------------------------------------------------------

    def _checked_overwrites(self, guild_id: int, overwrites: Sequence[Overwrite]) -> list[Overwrite]:
        guild = self.world.guild(guild_id)
        for overwrite in overwrites:
            if overwrite.type == OVERWRITE_ROLE:
                self.world.role(guild_id, overwrite.id)
            elif overwrite.type == OVERWRITE_MEMBER:
                if overwrite.id not in guild.members:
                    raise InvalidValueError(f"overwrite for {overwrite.id}: not a member of guild {guild_id}")
            else:
                raise InvalidValueError("an overwrite's type is 0 (role) or 1 (member)")
            if overwrite.allow < 0 or overwrite.deny < 0:
                raise InvalidValueError("allow and deny are non-negative permission bit sets")
        return list(overwrites)

    def update_channel(
        self,
        guild_id: int,
        channel_id: int,
        *,
        overwrites: Sequence[Overwrite] | Unset = UNSET,
        nsfw: bool | Unset = UNSET,
        name: str | Unset = UNSET,
    ) -> ChannelTruth:
        """Change a channel's overwrites, NSFW flag and/or name: CHANNEL_UPDATE (THREAD_UPDATE: name only)."""
        guild = self.world.guild(guild_id)
        channel = self.world.channel(guild_id, channel_id)
        if channel.is_thread and (overwrites is not UNSET or nsfw is not UNSET):
            raise InvalidValueError("a thread has no overwrites or NSFW flag of its own: change its parent")
        if overwrites is not UNSET:
            overwrites = self._checked_overwrites(guild_id, overwrites)
        if name is not UNSET:
            name = _text(name, "channel name", low=1, high=100)
        if overwrites is not UNSET:
            channel.overwrites = list(overwrites)
        if nsfw is not UNSET:
            channel.nsfw = bool(nsfw)
        if name is not UNSET:
            channel.name = name
        event = "THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE"
        self.hub.dispatch(event, guild_id, INTENT_GUILDS, channel_event_payload(guild, channel))
        return channel_truth(channel)

    def create_channel(
        self,
        guild_id: int,
        name: str,
        *,
        type: int = TEXT_CHANNEL,
        parent_id: int | None = None,
        overwrites: Sequence[Overwrite] = (),
        nsfw: bool = False,
    ) -> ChannelTruth:
        """A new text channel, category or public thread: CHANNEL_CREATE (THREAD_CREATE for a thread)."""
        guild = self.world.guild(guild_id)
        if type not in CHANNEL_TYPES:
            raise InvalidValueError(f"type must be one of {CHANNEL_TYPES}")
        name = _text(name, "channel name", low=1, high=100)
        checked = self._checked_overwrites(guild_id, overwrites)
        parent = None if parent_id is None else self.world.channel(guild_id, parent_id)
        if type == PUBLIC_THREAD:
            if parent is None or parent.type != TEXT_CHANNEL:
                raise InvalidValueError("a thread's parent_id must be a text channel")
            if checked or nsfw:
                raise InvalidValueError("a thread has no overwrites or NSFW flag of its own")
        elif parent is not None and (type == CATEGORY_CHANNEL or parent.type != CATEGORY_CHANNEL):
            raise InvalidValueError("a channel's parent_id must be a category (a category has none)")
        position = sum(1 for c in guild.channels.values() if not c.is_thread)
        channel = Channel(
            self.world.ids.next(),
            name,
            0 if type == PUBLIC_THREAD else position,
            type=type,
            parent_id=parent_id,
            nsfw=nsfw,
            overwrites=checked,
        )
        guild.channels[channel.id] = channel
        if channel.is_thread:
            thread = thread_payload(guild_id, channel, guild.owner_id)
            thread["newly_created"] = True
            self.hub.dispatch("THREAD_CREATE", guild_id, INTENT_GUILDS, thread)
        else:
            self.hub.dispatch("CHANNEL_CREATE", guild_id, INTENT_GUILDS, channel_payload(guild_id, channel))
        return channel_truth(channel)

    def delete_channel(self, guild_id: int, channel_id: int) -> None:
        """Delete a channel or thread: CHANNEL_DELETE (THREAD_DELETE); a category's children lose their parent."""
        guild = self.world.guild(guild_id)
        channel = self.world.channel(guild_id, channel_id)
        if channel.is_thread:
            del guild.channels[channel_id]
            payload = {
                "id": str(channel_id),
                "guild_id": str(guild_id),
                "parent_id": str(channel.parent_id),
                "type": channel.type,
            }
            self.hub.dispatch("THREAD_DELETE", guild_id, INTENT_GUILDS, payload)
            return
        for thread in [c for c in guild.channels.values() if c.is_thread and c.parent_id == channel_id]:
            del guild.channels[thread.id]  # Discord deletes a channel's threads with it, without events
        del guild.channels[channel_id]
        self.hub.dispatch("CHANNEL_DELETE", guild_id, INTENT_GUILDS, channel_event_payload(guild, channel))
        for child in guild.channels.values():
            if child.parent_id == channel_id:
                child.parent_id = None
                self.hub.dispatch(
                    "CHANNEL_UPDATE", guild_id, INTENT_GUILDS, channel_event_payload(guild, child)
                )

    def rename_guild(self, guild_id: int, name: str) -> None:
        guild = self.world.guild(guild_id)
        guild.name = _text(name, "guild name", low=2, high=100)
        self.hub.dispatch("GUILD_UPDATE", guild_id, INTENT_GUILDS, guild_update_payload(guild))

    def remove_guild(self, guild_id: int) -> None:
        """The bot is removed from a guild: GUILD_DELETE without ``unavailable``, the guild disappears."""
        guild = self.world.guild(guild_id)
        self.hub.dispatch("GUILD_DELETE", guild_id, INTENT_GUILDS, {"id": str(guild_id)})
        for user_id in list(guild.members):
            self.world.leave(guild, user_id)
        del self.world.guilds[guild_id]

    def add_guild(self, size: int) -> AddedGuild:
        """The bot is added to a new guild of ``size`` members: GUILD_CREATE, live, with its members."""
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_ADDED_GUILD_SIZE:
            raise InvalidValueError(f"size must be an integer 1..{MAX_ADDED_GUILD_SIZE}")
        guild = self.builder.add_guild(self.world, size)
        self.hub.send_guild_create(guild, joined=True)
        return {"guild_id": str(guild.id), "name": guild.name, "member_count": len(guild.members)}

    def start_outage(self, guild_id: int) -> None:
        """The guild becomes unavailable (GUILD_DELETE ``unavailable: true``); it changes on unseen."""
        guild = self.world.guild(guild_id)
        if guild.unavailable:
            raise InvalidValueError(f"guild {guild_id} is already unavailable")
        self.hub.dispatch("GUILD_DELETE", guild_id, INTENT_GUILDS, {"id": str(guild_id), "unavailable": True})
        guild.unavailable = True

    def end_outage(self, guild_id: int) -> None:
        """The guild is available again: GUILD_CREATE ``unavailable: false`` with its current state."""
        guild = self.world.guild(guild_id)
        if not guild.unavailable:
            raise InvalidValueError(f"guild {guild_id} is not unavailable")
        guild.unavailable = False
        self.hub.send_guild_create(guild, joined=False)

    # -- OAuth2 -------------------------------------------------------------------------------------

    def issue_oauth_token(self, user_id: int | None = None) -> str:
        """A Bearer token for ``GET /users/@me``: for a known user, or (None) for a new stranger."""
        if user_id is None:
            user: User = self.builder.new_user()
            self.world.add_user(user)
        elif user_id not in self.world.users:
            raise InvalidValueError(f"unknown user {user_id}")
        else:
            user = self.world.users[user_id]
        token = secrets.token_urlsafe(24)
        self.world.oauth_tokens[token] = user.id
        return token
