"""Presences for members not in the member table yet, kept until the member is known.

While a large guild is downloaded in chunks (at start and after every re-IDENTIFY), and for a member
whose GUILD_MEMBER_ADD comes after its first PRESENCE_UPDATE, a presence arrives for a member the table
does not have: there is nothing to put it on. The chunk (requested without presences) then brings the
member as offline, so the last word Discord said about that member would be lost. The presence handler
keeps the status of such a presence here and puts it on the member when it appears: when a chunk or a
GUILD_MEMBER_ADD adds it, and before the guild's full-sync snapshot.

A kept presence is newer than the member's chunk (that is why it was kept) and older than any
presence seen once the member is known (which replaces it), and older than a later GUILD_CREATE of
the guild: that starts a new member table (kept presences of the old one are superseded), and after an
outage the guild was unavailable (its kept presences are forgotten then).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX_PER_GUILD = 10_000


class _Member(Protocol):
    status: str


class Members(Protocol):
    """What the keeping needs of a guild's member table (ingest.members.GuildMembers)."""

    @property
    def id(self) -> int: ...

    @property
    def unavailable(self) -> bool: ...

    def get_member(self, user_id: int, /) -> _Member | None: ...


@dataclass
class _GuildHeld:
    guild: Members  # the table they were seen against (a new one after GUILD_CREATE)
    presences: dict[int, str] = field(default_factory=dict)  # user id -> status, oldest first


class HeldPresences:
    """Per guild, the latest status of each member the table does not have yet (bounded)."""

    def __init__(self, max_per_guild: int = DEFAULT_MAX_PER_GUILD) -> None:
        self.max_per_guild = max_per_guild
        self._guilds: dict[int, _GuildHeld] = {}
        self.kept = 0
        self.applied = 0
        self.superseded = 0  # replaced by newer state from Discord: nothing lost
        self.dropped: Counter[str] = Counter()  # reason -> count; lost on purpose

    def observe(self, guild: Members | None, user_id: int, status: str) -> None:
        """A PRESENCE_UPDATE the table could not place (``guild`` None: no table for its guild)."""
        if guild is None:
            self.drop("unknown_guild")
            return
        if guild.unavailable:  # an outage: GUILD_CREATE brings newer state
            self.drop("guild_unavailable")
            return
        held = self._guilds.get(guild.id)
        if guild.get_member(user_id) is not None:
            if held is not None and held.presences.pop(user_id, None) is not None:
                self.superseded += 1  # the member's own status is newer
            return
        if held is None or held.guild is not guild:
            if held is not None:
                self.superseded += len(held.presences)
            held = self._guilds[guild.id] = _GuildHeld(guild)
        if held.presences.pop(user_id, None) is not None:
            self.superseded += 1
        elif len(held.presences) >= self.max_per_guild:
            del held.presences[next(iter(held.presences))]
            self.drop("bound")
        held.presences[user_id] = status
        self.kept += 1

    def holds(self, guild_id: int) -> bool:
        """Whether presences are kept for the guild (the hot paths skip the rest when not)."""
        return guild_id in self._guilds

    def apply_guild(self, guild: Members) -> int:
        """Put every kept presence whose member is now in the table on it; returns how many."""
        held = self._guilds.get(guild.id)
        if held is None:
            return 0
        if held.guild is not guild:
            self.forget_guild(guild.id, superseded=True)
            return 0
        applied = 0
        for user_id in list(held.presences):
            member = guild.get_member(user_id)
            if member is not None:
                member.status = held.presences.pop(user_id)
                applied += 1
        if not held.presences:
            del self._guilds[guild.id]
        self.applied += applied
        if applied:
            log.info("held_presences_applied", server_id=guild.id, applied=applied, still_held=self.held)
        return applied

    def apply_member(self, guild: Members, user_id: int) -> bool:
        """A member just joined: put its kept presence on it, if any."""
        held = self._guilds.get(guild.id)
        if held is None:
            return False
        if held.guild is not guild:
            self.forget_guild(guild.id, superseded=True)
            return False
        member = guild.get_member(user_id)
        status = held.presences.pop(user_id, None) if member is not None else None
        if member is None or status is None:
            return False
        member.status = status
        self.applied += 1
        return True

    def forget_member(self, guild_id: int, user_id: int) -> None:
        """The member left: its kept presence no longer matters."""
        held = self._guilds.get(guild_id)
        if held is not None and held.presences.pop(user_id, None) is not None:
            self.superseded += 1

    def forget_guild(self, guild_id: int, *, superseded: bool = False) -> None:
        """The bot left the guild (dropped), or a new GUILD_CREATE replaced it (superseded)."""
        held = self._guilds.pop(guild_id, None)
        if held is None or not held.presences:
            return
        if superseded:
            self.superseded += len(held.presences)
        else:
            self.drop("guild_removed", len(held.presences))

    @property
    def held(self) -> int:
        """Presences kept right now, over every guild."""
        return sum(len(held.presences) for held in self._guilds.values())

    def counts(self) -> dict[str, object]:
        """The counters, for logs and tests."""
        return {
            "held": self.held,
            "kept": self.kept,
            "applied": self.applied,
            "superseded": self.superseded,
            "dropped": dict(self.dropped),
        }

    def drop(self, reason: str, count: int = 1) -> None:
        """Count presences lost on purpose, logging the first and then every thousandth."""
        self.dropped[reason] += count
        total = sum(self.dropped.values())
        if total == count or total % 1000 < count:  # the first, then every thousandth
            log.warning("presence_dropped", reason=reason, dropped_total=total, bound=self.max_per_guild)
