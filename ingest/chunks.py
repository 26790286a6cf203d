"""Whether a guild's member download is complete: a full sync of a partial table would delete members.

Discord answers REQUEST_GUILD_MEMBERS with ``chunk_count`` GUILD_MEMBERS_CHUNK events that share the
request's nonce. A chunk can be lost (or never come), and discord.py then reports the guild available
after its timeout anyway; this tracker tells the ingest to ask again instead of syncing.
"""

from __future__ import annotations


class ChunkProgress:
    """The chunk indices received per guild and nonce; complete once one answer has all of its chunks."""

    def __init__(self) -> None:
        self._answers: dict[int, dict[str | None, tuple[int, set[int]]]] = {}
        self._complete: set[int] = set()

    def reset(self, guild_id: int) -> None:
        """A new GUILD_CREATE (or the guild is gone): the members are downloaded again from scratch."""
        self._answers.pop(guild_id, None)
        self._complete.discard(guild_id)

    def received(self, guild_id: int, nonce: str | None, index: int, count: int) -> bool:
        """Record one chunk; True when it completes its answer (every index of ``count`` seen)."""
        answers = self._answers.setdefault(guild_id, {})
        expected, seen = answers.get(nonce, (count, set()))
        seen.add(index)
        answers[nonce] = (max(expected, count), seen)
        if len(seen) >= max(expected, count):
            del answers[nonce]
            self._complete.add(guild_id)
            return True
        return False

    def complete(self, guild_id: int) -> bool:
        """Whether an answer with all its chunks arrived since the guild's last reset."""
        return guild_id in self._complete


def members_complete(progress: ChunkProgress, guild_id: int, cached: int, member_count: int | None) -> bool:
    """A guild's table can be synced: a chunk answer completed, or GUILD_CREATE carried every member."""
    return progress.complete(guild_id) or cached >= (member_count or 0)
