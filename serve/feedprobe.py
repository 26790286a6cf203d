"""Whether the change feed of one LISTEN connection is proven to deliver: the probe's decisions, no I/O.

A connection that answers ``SELECT 1`` can still be deaf: LISTEN registered on a backend a transaction
pooler lent to someone else, a standby that never notifies, a frozen backend behind a live TCP socket.
So the proof goes through the feed itself: every ``interval_s`` a NOTIFY is committed from another
connection (the pool), and it must come back on the LISTEN connection within ``timeout_s``. Since
notifications arrive in commit order, a probe back also proves every change committed before it.
serve/listener.py does the I/O; this class only says what is due and what the outcome means.
"""

from __future__ import annotations

import math

from shared.probe import Probe


class FeedProbe:
    """The probes of one LISTEN connection (a new one after each reconnect). Times are monotonic seconds."""

    def __init__(self, sender: str, interval_s: float, timeout_s: float) -> None:
        self.sender = sender
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._seq = 0
        self._outstanding: dict[int, float] = {}  # seq -> sent at
        self._next_at = -math.inf  # the first probe at once: readiness waits for it
        self._send_errors: dict[int, str] = {}
        self.round_trip_s: float | None = None  # of the last probe back
        self.proven = False  # a probe came back on this connection

    def due(self, now: float) -> Probe | None:
        """The probe to send now, if one is due (then it counts as sent at ``now``)."""
        if now < self._next_at:
            return None
        self._seq += 1
        self._outstanding[self._seq] = now
        self._next_at = now + self.interval_s
        return Probe(self.sender, self._seq)

    def send_failed(self, probe: Probe, error: str) -> None:
        """The NOTIFY could not be committed: kept for the verdict's reason (it cannot come back)."""
        if probe.seq in self._outstanding:
            self._send_errors[probe.seq] = error

    def received(self, probe: Probe, now: float) -> float | None:
        """A probe arrived on the LISTEN connection: its round trip, or None if not one of ours in flight."""
        if probe.sender != self.sender:
            return None  # another serve's probe: same channel, not our proof
        sent_at = self._outstanding.pop(probe.seq, None)
        self._send_errors.pop(probe.seq, None)
        if sent_at is None:
            return None
        for older in [seq for seq in self._outstanding if seq < probe.seq]:
            del self._outstanding[older]  # commit order: an older one can no longer arrive
            self._send_errors.pop(older, None)
        self.proven = True
        self.round_trip_s = now - sent_at
        return self.round_trip_s

    def deaf(self, now: float) -> str | None:
        """Why the feed is deaf (a probe not back within ``timeout_s``), or None while it is not."""
        if not self._outstanding:
            return None
        seq, sent_at = min(self._outstanding.items())
        if now - sent_at < self.timeout_s:
            return None
        reason = f"feed probe not received within {self.timeout_s:g}s"
        error = self._send_errors.get(seq)
        return f"{reason} (sending it failed: {error})" if error else f"{reason}: LISTEN hears nothing"

    def wake_in(self, now: float) -> float:
        """Seconds until something is to be done: the next probe, or the oldest one's deadline."""
        moments = [self._next_at]
        if self._outstanding:
            moments.append(min(self._outstanding.values()) + self.timeout_s)
        return max(0.0, min(moments) - now)
