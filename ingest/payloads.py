"""The raw Discord gateway payloads the lean event path reads, as typed structures.

Only the fields :mod:`ingest.gateway` and :mod:`ingest.members` look at are declared; Discord sends more.
These are plain dicts at runtime (no validation on the hot path): a payload enters typed at one place,
the parser table's ``Callable[[Any], None]`` (:data:`RawParser`), where discord.py hands over the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Required, TypedDict

# discord.py's parser table entry: the decoded JSON of one dispatch's ``d``, untyped by nature.
RawParser = Callable[[Any], None]


class UserPayload(TypedDict, total=False):
    """A user; a presence carries only ``id`` unless a name changed."""

    id: Required[str]
    username: str
    global_name: str | None
    bot: bool


class MemberPayload(TypedDict, total=False):
    """A guild member (in GUILD_CREATE, a chunk, GUILD_MEMBER_ADD/UPDATE)."""

    user: Required[UserPayload]
    nick: str | None
    roles: list[str]


class MemberEvent(MemberPayload, total=False):
    """GUILD_MEMBER_ADD and GUILD_MEMBER_UPDATE."""

    guild_id: Required[str]


class MemberRemoveEvent(TypedDict):
    """GUILD_MEMBER_REMOVE."""

    guild_id: str
    user: UserPayload


class PresencePayload(TypedDict, total=False):
    """PRESENCE_UPDATE, and an entry of GUILD_CREATE's or a chunk's presences (no ``guild_id`` there)."""

    user: Required[UserPayload]
    status: str
    guild_id: str


class RolePayload(TypedDict, total=False):
    """A role of GUILD_CREATE."""

    id: Required[str]
    position: int
    color: int


class MembersChunkEvent(TypedDict, total=False):
    """GUILD_MEMBERS_CHUNK."""

    guild_id: Required[str]
    members: list[MemberPayload]
    presences: list[PresencePayload]
    chunk_index: int
    chunk_count: int
    nonce: str


class UnavailableGuildPayload(TypedDict, total=False):
    """A guild of READY (always unavailable until its GUILD_CREATE)."""

    id: Required[str]
    unavailable: bool


class GuildCreateEvent(TypedDict, total=False):
    """GUILD_CREATE: a whole guild, or only ``id`` and ``unavailable`` during an outage."""

    id: Required[str]
    unavailable: bool
    roles: list[RolePayload]
    members: list[MemberPayload]
    presences: list[PresencePayload]


class ReadyEvent(TypedDict, total=False):
    """READY (the fields the lean path reads)."""

    guilds: list[UnavailableGuildPayload]


class RateLimitedMeta(TypedDict, total=False):
    """What a RATE_LIMITED dispatch was about (for opcode 8: the guild and the request's nonce)."""

    guild_id: str
    nonce: str | None


class RateLimitedEvent(TypedDict, total=False):
    """RATE_LIMITED: Discord refused a gateway request (``opcode``) for ``retry_after`` seconds."""

    opcode: Required[int]
    retry_after: Required[float]
    meta: RateLimitedMeta
