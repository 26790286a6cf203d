"""The ingest's own member cache: per guild, only what a discord_users row needs, built from raw payloads.

discord.py's ``Member`` (with its ``User``, ``ClientStatus`` and activities) costs about 1.3 KiB per member
and most of the ingest's CPU; a row needs a display name, a status and the role ids. Here a member is one
slotted object of four references: the display name (interned, cut to the column's size), the status
(one of four interned strings), the role ids (a tuple shared by every member with the same roles) and
flags. Colours are resolved per distinct role set and cached until a role of the guild changes.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Mapping

from ingest.mapping import (
    USERNAME_MAX_CHARS,
    MemberRow,
    RoleView,
    clean_text,
    highest_role_color,
    status_name,
)
from ingest.payloads import MemberPayload, PresencePayload, RolePayload, UserPayload

BOT = 1  # LeanMember.flags: the user is a bot
NICKED = 2  # the display name is the guild nick (a user rename does not change it)
# The status is a guess: the member came from GUILD_MEMBER_ADD/UPDATE before any presence or chunk told
# it (a huge guild's GUILD_CREATE has nobody): the next chunk that carries the member says it.
STATUS_UNKNOWN = 4
OFFLINE = "offline"
RoleIds = tuple[int, ...]


class LeanMember:
    """One member: display name, status, role ids, flags (BOT, NICKED, STATUS_UNKNOWN)."""

    __slots__ = ("flags", "name", "roles", "status")

    def __init__(self, name: str, status: str, roles: RoleIds, flags: int) -> None:
        self.name = name
        self.status = status
        self.roles = roles
        self.flags = flags


def display_name(data: MemberPayload) -> tuple[str, int]:
    """Discord's display name of a member payload (nick, else global name, else username) and its flags."""
    user = data["user"]
    nick = data.get("nick")
    flags = BOT if user.get("bot") else 0
    if nick:
        return sys.intern(clean_text(nick, USERNAME_MAX_CHARS)), flags | NICKED
    name = user.get("global_name") or user.get("username") or ""
    return sys.intern(clean_text(name, USERNAME_MAX_CHARS)), flags


class GuildMembers:
    """The members of one guild as this GUILD_CREATE started them (a new table per GUILD_CREATE)."""

    __slots__ = ("_colours", "_role_sets", "id", "members", "roles", "server_id", "unavailable")

    def __init__(self, guild_id: int, roles: Mapping[int, RoleView] | None = None) -> None:
        self.id = guild_id
        self.server_id = str(guild_id)
        self.unavailable = False
        self.members: dict[int, LeanMember] = {}
        self.roles: dict[int, RoleView] = dict(roles or {})
        self._role_sets: dict[RoleIds, RoleIds] = {}
        self._colours: dict[RoleIds, str] = {}

    def __len__(self) -> int:
        return len(self.members)

    def get_member(self, user_id: int) -> LeanMember | None:
        return self.members.get(user_id)

    # --- roles ----------------------------------------------------------------------------------------
    def set_role(self, role: RoleView) -> None:
        """A role was created or changed: colours are resolved again from now on."""
        self.roles[role.role_id] = role
        self._colours.clear()

    def delete_role(self, role_id: int) -> None:
        """A role was deleted: its holders lose it, as on Discord (which sends no member update for it)."""
        for _user_id, member in list(self.holding(role_id)):
            member.roles = self.role_ids([str(r) for r in member.roles if r != role_id])
        self.roles.pop(role_id, None)
        self._colours.clear()

    def role_ids(self, raw: list[str] | None) -> RoleIds:
        """The payload's role ids as the guild's shared tuple for that set."""
        key = tuple(sorted(map(int, raw))) if raw else ()
        return self._role_sets.setdefault(key, key)

    def colour(self, roles: RoleIds) -> str:
        """``#rrggbb`` of the highest coloured role of the set (cached per set until a role changes)."""
        colour = self._colours.get(roles)
        if colour is None:
            known = self.roles
            colour = self._colours[roles] = highest_role_color(known[r] for r in roles if r in known)
        return colour

    # --- members --------------------------------------------------------------------------------------
    def upsert(self, data: MemberPayload, status: str | None = None) -> tuple[int, LeanMember, bool]:
        """A member payload (GUILD_MEMBER_ADD/UPDATE, chunk): the member, and whether its row changed.

        ``status`` None keeps the cached status (offline for a new member).
        """
        user_id = int(data["user"]["id"])
        name, flags = display_name(data)
        roles = self.role_ids(data.get("roles"))
        member = self.members.get(user_id)
        if member is None:
            if status is None:
                flags |= STATUS_UNKNOWN
            member = self.members[user_id] = LeanMember(name, status or OFFLINE, roles, flags)
            return user_id, member, True
        # The role ids are stored too (visibility rules), so any change of the set rewrites the row.
        changed = member.name != name or member.roles != roles
        member.name, member.roles = name, roles
        member.flags = flags | (member.flags & STATUS_UNKNOWN if status is None else 0)
        if status is not None and status != member.status:
            member.status, changed = status, True
        return user_id, member, changed

    def add_chunk(self, members: list[MemberPayload], statuses: Mapping[int, str]) -> list[int]:
        """Members of GUILD_CREATE or a chunk; one already cached is kept (it is newer), but for a status
        it only guessed (STATUS_UNKNOWN). Returns the new ids."""
        added = []
        cached = self.members
        role_ids = self.role_ids
        for data in members:
            user_id = int(data["user"]["id"])
            known = cached.get(user_id)
            if known is not None:
                if known.flags & STATUS_UNKNOWN:
                    known.status = statuses.get(user_id, OFFLINE)
                    known.flags &= ~STATUS_UNKNOWN
                continue
            name, flags = display_name(data)
            cached[user_id] = LeanMember(
                name, statuses.get(user_id, OFFLINE), role_ids(data.get("roles")), flags
            )
            added.append(user_id)
        return added

    def rename_user(self, user_id: int, user: UserPayload) -> bool:
        """A presence carried the user's new names: the display name changes unless a nick is set."""
        member = self.members.get(user_id)
        if member is None or member.flags & NICKED:
            return False
        name, _ = display_name({"user": user})
        if name == member.name:
            return False
        member.name = name
        return True

    def remove(self, user_id: int) -> bool:
        return self.members.pop(user_id, None) is not None

    def row(self, user_id: int | str, member: LeanMember) -> MemberRow:
        # Every presence comes here: the cached colour is read inline, colour() only on a miss.
        roles = member.roles
        colour = self._colours.get(roles) or self.colour(roles)
        return MemberRow(self.server_id, str(user_id), member.name, member.status, colour, role_text(roles))

    def rows(self, include_bots: bool) -> list[MemberRow]:
        """Every member's row (the full sync's snapshot)."""
        server_id, colour = self.server_id, self.colour
        return [
            MemberRow(server_id, str(user_id), m.name, m.status, colour(m.roles), role_text(m.roles))
            for user_id, m in self.members.items()
            if include_bots or not m.flags & BOT
        ]

    def holding(self, role_id: int) -> Iterator[tuple[int, LeanMember]]:
        """The members that have the role."""
        sets = {id(role_set) for role_set in self._role_sets.values() if role_id in role_set}
        for user_id, member in self.members.items():
            if id(member.roles) in sets:
                yield user_id, member

    def display_name_of(self, user_id: int) -> str | None:
        member = self.members.get(user_id)
        return None if member is None else member.name


@functools.lru_cache(maxsize=4096)
def role_text(roles: RoleIds) -> str:
    """A role set as MemberRow.role_ids: comma-separated ids (sets are shared tuples, so cached)."""
    return ",".join(map(str, roles))


def presence_status(data: PresencePayload) -> str:
    """The schema status of a presence payload (its top-level ``status``; client statuses do not matter)."""
    return status_name(data.get("status"))


def role_view(data: RolePayload) -> RoleView:
    """A role payload as the colour rule needs it."""
    return RoleView(int(data.get("position") or 0), int(data["id"]), int(data.get("color") or 0))
