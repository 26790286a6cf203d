"""Discord's limits on the ingest, as pure rules: when to IDENTIFY and when to ask for members again.

- The identify budget (``session_start_limit`` of ``GET /gateway/bot``): a bot past it has its token
  reset by Discord, so the ingest never spends the last ``reserve`` IDENTIFYs; it waits for
  ``reset_after`` instead (:func:`identify_wait_s`).
- ``max_concurrency``: one IDENTIFY per bucket (``shard_id % max_concurrency``) per 5 s
  (:class:`IdentifyPacer`).
- Request Guild Members: one request for all members per guild per 30 s; a refused one comes back as a
  RATE_LIMITED dispatch naming ``retry_after``, and the next request waits exactly that long
  (:class:`MemberRequestLimits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTIFY_INTERVAL_S = 5.0  # Discord: one IDENTIFY per max_concurrency bucket per 5 s
RETRY_MARGIN_S = 0.1  # asked again this long after retry_after ends (clocks and rounding)


@dataclass(frozen=True)
class IdentifyBudget:
    """``session_start_limit`` as Discord reported it (``reset_after`` in seconds here)."""

    total: int
    remaining: int
    reset_after_s: float
    max_concurrency: int


def identify_wait_s(budget: IdentifyBudget, reserve: int) -> float:
    """Seconds to wait before the next IDENTIFY: 0 while more than ``reserve`` remain, else until reset."""
    if budget.remaining > reserve:
        return 0.0
    return max(budget.reset_after_s, 0.0)


def budget_reason(budget: IdentifyBudget, reserve: int, wait_s: float) -> str:
    """What /readyz, the log and ``dzone status`` say while the ingest waits for the budget to reset."""
    return (
        f"identify budget: {budget.remaining} of {budget.total} session starts left, keeping {reserve} in "
        f"reserve; next IDENTIFY in {wait_s:.0f} s (Discord's session_start_limit reset_after)"
    )


@dataclass
class IdentifyPacer:
    """One IDENTIFY per bucket per ``interval_s``, across the shards of this process."""

    interval_s: float = IDENTIFY_INTERVAL_S
    _last: dict[int, float] = field(default_factory=dict)

    def wait_s(self, shard_id: int, max_concurrency: int, now: float) -> float:
        """Seconds until ``shard_id``'s bucket may IDENTIFY again (0: now)."""
        last = self._last.get(shard_id % max(1, max_concurrency))
        return 0.0 if last is None else max(0.0, last + self.interval_s - now)

    def identified(self, shard_id: int, max_concurrency: int, now: float) -> None:
        self._last[shard_id % max(1, max_concurrency)] = now


@dataclass
class MemberRequestLimits:
    """When each guild's members may be asked for again, from the RATE_LIMITED dispatches received."""

    refusals: int = 0  # RATE_LIMITED dispatches for member requests, for /metrics
    waited_s: float = 0.0  # seconds of retry_after honoured, for /metrics
    _allowed_at: dict[int, float] = field(default_factory=dict)

    def refused(self, guild_id: int, retry_after_s: float, now: float) -> None:
        """Discord refused a request for ``guild_id``'s members: not again before ``retry_after``."""
        self.refusals += 1
        self.waited_s += max(retry_after_s, 0.0)
        self._allowed_at[guild_id] = max(self._allowed_at.get(guild_id, 0.0), now + retry_after_s)

    def wait_s(self, guild_id: int, now: float) -> float:
        """Seconds before a request for ``guild_id``'s members would be accepted (0: now)."""
        allowed_at = self._allowed_at.get(guild_id)
        if allowed_at is None:
            return 0.0
        if now >= allowed_at + RETRY_MARGIN_S:
            del self._allowed_at[guild_id]
            return 0.0
        return allowed_at + RETRY_MARGIN_S - now
