"""Presences for members discord.py has not cached yet, kept until the member is known.

While a large guild is downloaded in chunks (at start and after every re-IDENTIFY), and for a member
whose GUILD_MEMBER_ADD comes after its first PRESENCE_UPDATE, discord.py discards the presence: it has
no member to put it on. The chunk (requested without presences) then brings the member as offline, so
the last word Discord said about that member would be lost. We see every presence first through
discord.py's raw event (``enable_raw_presences``), keep the ones it cannot place, and put them on the
member when it appears: before the guild's full-sync snapshot and on join.

A kept presence is newer than the member's chunk (that is why it was kept) and older than any
presence seen once the member is known (which replaces it), and older than a later GUILD_CREATE of
the guild: after a re-IDENTIFY discord.py has a new Guild object (kept presences of the old one are
superseded), after an outage the guild was unavailable (its kept presences are forgotten then).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import discord
import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX_PER_GUILD = 10_000


@dataclass
class _GuildHeld:
    guild: discord.Guild  # the Guild object they were seen against (a new one after GUILD_CREATE)
    presences: dict[int, discord.RawPresenceUpdateEvent] = field(default_factory=dict)  # oldest first


def apply_presence(member: discord.Member, raw: discord.RawPresenceUpdateEvent) -> None:
    """Put ``raw`` on the cached member, as discord.py does for a member it knows."""
    member.client_status = raw.client_status
    member.activities = raw.activities


class HeldPresences:
    """Per guild, the latest presence of each member discord.py does not know yet (bounded)."""

    def __init__(self, max_per_guild: int = DEFAULT_MAX_PER_GUILD) -> None:
        self.max_per_guild = max_per_guild
        self._guilds: dict[int, _GuildHeld] = {}
        self.kept = 0
        self.applied = 0
        self.superseded = 0  # replaced by newer state from Discord: nothing lost
        self.dropped: Counter[str] = Counter()  # reason -> count; lost on purpose

    def observe(self, raw: discord.RawPresenceUpdateEvent) -> None:
        """Every PRESENCE_UPDATE, before discord.py looks the member up."""
        guild = raw.guild
        if guild is None:
            self._drop("unknown_guild")
            return
        if guild.unavailable:  # between READY and GUILD_CREATE, or an outage: GUILD_CREATE brings newer state
            self._drop("guild_unavailable")
            return
        held = self._guilds.get(guild.id)
        if guild.get_member(raw.user_id) is not None:
            if held is not None and held.presences.pop(raw.user_id, None) is not None:
                self.superseded += 1  # discord.py applies this newer one itself
            return
        if held is None or held.guild is not guild:
            if held is not None:
                self.superseded += len(held.presences)
            held = self._guilds[guild.id] = _GuildHeld(guild)
        if held.presences.pop(raw.user_id, None) is not None:
            self.superseded += 1
        elif len(held.presences) >= self.max_per_guild:
            del held.presences[next(iter(held.presences))]
            self._drop("bound")
        held.presences[raw.user_id] = raw
        self.kept += 1

    def apply_guild(self, guild: discord.Guild) -> int:
        """Put every kept presence whose member is now cached on it; returns how many."""
        held = self._guilds.get(guild.id)
        if held is None:
            return 0
        if held.guild is not guild:
            self.forget_guild(guild.id, superseded=True)
            return 0
        applied = 0
        for user_id in [uid for uid in held.presences if guild.get_member(uid) is not None]:
            member = guild.get_member(user_id)
            if member is not None:
                apply_presence(member, held.presences.pop(user_id))
                applied += 1
        if not held.presences:
            del self._guilds[guild.id]
        self.applied += applied
        if applied:
            log.info("held_presences_applied", server_id=guild.id, applied=applied, still_held=self.held)
        return applied

    def apply_member(self, member: discord.Member) -> bool:
        """A member just joined: put its kept presence on it, if any."""
        held = self._guilds.get(member.guild.id)
        if held is None:
            return False
        if held.guild is not member.guild:
            self.forget_guild(member.guild.id, superseded=True)
            return False
        raw = held.presences.pop(member.id, None)
        if raw is None:
            return False
        apply_presence(member, raw)
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
            self._drop("guild_removed", len(held.presences))

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

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        total = sum(self.dropped.values())
        if total == count or total % 1000 < count:  # the first, then every thousandth
            log.warning("presence_dropped", reason=reason, dropped_total=total, bound=self.max_per_guild)
