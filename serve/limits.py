"""Per-socket pacing (protocol rule 15) and call rate limits."""

from __future__ import annotations

import time


class Pacer:
    """A token bucket of ``per_minute`` frames with a burst of the same size; ``delay()`` says how long
    to wait before answering the next frame. Over the limit a socket is slowed down, never closed (rule 15)."""

    __slots__ = ("_last", "_rate", "_size", "_tokens")

    def __init__(self, per_minute: int) -> None:
        self._size = float(per_minute)
        self._rate = per_minute / 60.0
        self._tokens = self._size
        self._last = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        self._tokens = min(self._size, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class RateLimit:
    """A token bucket of ``per_second`` calls with a burst of the same size (at least 1)."""

    __slots__ = ("_last", "_rate", "_size", "_tokens")

    def __init__(self, per_second: float) -> None:
        self._size = max(1.0, per_second)
        self._rate = per_second
        self._tokens = self._size
        self._last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._size, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def take(self) -> bool:
        """Use one call if there is one; False (nothing used) when over the rate."""
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def full(self) -> bool:
        self._refill()
        return self._tokens >= self._size
