"""Discord's own limits on a bot, as pure rules over a clock: the identify budget and member requests.

- ``session_start_limit``: IDENTIFYs per window (1,000 a day), reported by ``GET /gateway/bot`` and spent
  by every IDENTIFY with a valid token; at most ``max_concurrency`` IDENTIFYs per rate-limit bucket
  (``shard_id % max_concurrency``) per ``identify_interval_s`` (5 s on Discord).
- Request Guild Members: one request for *all* members (``query: ""``, ``limit: 0``) per guild per
  ``window_s`` (30 s); more are refused with a RATE_LIMITED dispatch naming ``retry_after``.
- Presences: a guild over ``presence_threshold`` members (75,000) gets a GUILD_CREATE without them.

The gateway owns one :class:`DiscordLimits`; the control API and the CLI switch its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRESENCE_THRESHOLD = 75_000  # members above which GUILD_CREATE carries no presences
MEMBER_REQUEST_WINDOW_S = 30.0
SESSION_START_TOTAL = 1000
SESSION_START_WINDOW_S = 86_400.0
IDENTIFY_INTERVAL_S = 5.0  # Discord: max_concurrency IDENTIFYs per bucket per 5 s


@dataclass
class SessionStartBudget:
    """IDENTIFYs left in the current window; the window restarts (and refills) at ``reset_at``."""

    total: int = SESSION_START_TOTAL
    remaining: int = SESSION_START_TOTAL
    window_s: float = SESSION_START_WINDOW_S
    max_concurrency: int = 1
    reset_at: float | None = None  # monotonic; None until the first IDENTIFY opens a window

    def _roll(self, now: float) -> None:
        if self.reset_at is not None and now >= self.reset_at:
            self.remaining = self.total
            self.reset_at = None

    def reset_after_s(self, now: float) -> float:
        """Seconds until ``remaining`` goes back to ``total`` (a full window when none is open)."""
        self._roll(now)
        return self.window_s if self.reset_at is None else max(0.0, self.reset_at - now)

    def spend(self, now: float) -> bool:
        """One IDENTIFY: False (nothing spent) when the budget is already empty."""
        self._roll(now)
        if self.remaining <= 0:
            return False
        if self.reset_at is None:
            self.reset_at = now + self.window_s
        self.remaining -= 1
        return True

    def payload(self, now: float) -> dict[str, int]:
        """``session_start_limit`` as ``GET /gateway/bot`` answers it (``reset_after`` in ms)."""
        reset_after_ms = round(self.reset_after_s(now) * 1000)
        return {
            "total": self.total,
            "remaining": self.remaining,
            "reset_after": reset_after_ms,
            "max_concurrency": self.max_concurrency,
        }


@dataclass
class IdentifyPacing:
    """One IDENTIFY per bucket (``shard_id % max_concurrency``) per ``interval_s`` (0: not enforced)."""

    interval_s: float = 0.0
    _last: dict[int, float] = field(default_factory=dict)

    def allow(self, shard_id: int, max_concurrency: int, now: float) -> bool:
        """Record an IDENTIFY of ``shard_id``; False when its bucket already had its share this interval."""
        if self.interval_s <= 0:
            return True
        bucket = shard_id % max(1, max_concurrency)
        last = self._last.get(bucket)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[bucket] = now
        return True


@dataclass
class MemberRequestLimit:
    """One all-member request per guild per ``window_s`` (0: not enforced)."""

    window_s: float = MEMBER_REQUEST_WINDOW_S
    _accepted_at: dict[int, float] = field(default_factory=dict)

    def retry_after(self, guild_id: int, now: float) -> float | None:
        """None (and the request counts) when allowed, else the seconds until the next one would be."""
        last = self._accepted_at.get(guild_id)
        if self.window_s > 0 and last is not None and now - last < self.window_s:
            return last + self.window_s - now
        self._accepted_at[guild_id] = now
        return None


@dataclass
class DiscordLimits:
    """Every limit of one simulated Discord, switchable while it runs."""

    presence_threshold: int = PRESENCE_THRESHOLD
    member_requests: MemberRequestLimit = field(default_factory=MemberRequestLimit)
    session_start: SessionStartBudget = field(default_factory=SessionStartBudget)
    identify_pacing: IdentifyPacing = field(default_factory=IdentifyPacing)
    # Discord resets a token whose app IDENTIFYs past its budget; every login fails until it is restored.
    token_reset: bool = False
