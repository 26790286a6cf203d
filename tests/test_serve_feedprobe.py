"""The feed probe's decisions (serve/feedprobe.py) without I/O, and its wire format (shared/probe.py)."""

from __future__ import annotations

import pytest

from serve.feedprobe import FeedProbe
from shared.probe import Answer, Ask, Probe, ProbeDecodeError, decode, encode


def test_first_probe_is_due_at_once_then_every_interval() -> None:
    probe = FeedProbe("me", interval_s=5, timeout_s=5)
    assert probe.due(100.0) == Probe("me", 1)
    assert probe.due(104.9) is None
    assert probe.due(105.0) == Probe("me", 2)


def test_a_probe_back_proves_the_feed_and_gives_its_round_trip() -> None:
    probe = FeedProbe("me", interval_s=5, timeout_s=5)
    sent = probe.due(10.0)
    assert sent is not None
    assert not probe.proven
    assert probe.received(sent, 10.25) == pytest.approx(0.25)
    assert probe.proven
    assert probe.round_trip_s == pytest.approx(0.25)
    assert probe.deaf(100.0) is None  # nothing in flight: nothing to judge


def test_a_probe_not_back_within_the_timeout_is_deaf() -> None:
    probe = FeedProbe("me", interval_s=5, timeout_s=5)
    probe.due(0.0)
    assert probe.deaf(4.99) is None
    reason = probe.deaf(5.0)
    assert reason is not None and "not received within 5s" in reason and "LISTEN hears nothing" in reason


def test_worst_case_detection_is_interval_plus_timeout() -> None:
    """A feed that dies right after a probe came back is judged deaf interval + timeout later."""
    probe = FeedProbe("me", interval_s=5, timeout_s=5)
    first = probe.due(0.0)
    assert first is not None and probe.received(first, 0.01) is not None
    now = 0.01
    while probe.deaf(now) is None:  # from here on nothing comes back
        now += probe.wake_in(now) or 0.01
        probe.due(now)
    assert now == pytest.approx(10.0)


def test_other_serves_probes_and_stale_ones_are_ignored() -> None:
    probe = FeedProbe("me", interval_s=1, timeout_s=5)
    assert probe.received(Probe("another-serve", 1), 0.0) is None
    assert probe.received(Probe("me", 7), 0.0) is None  # never sent on this connection
    assert not probe.proven


def test_a_newer_probe_back_settles_older_ones_in_flight() -> None:
    """Notifications arrive in commit order: once probe 2 is back, probe 1 never will be."""
    probe = FeedProbe("me", interval_s=1, timeout_s=5)
    probe.due(0.0)
    second = probe.due(1.0)
    assert second is not None
    assert probe.received(second, 1.5) == pytest.approx(0.5)
    assert probe.deaf(100.0) is None


def test_a_failed_send_is_named_in_the_verdict() -> None:
    probe = FeedProbe("me", interval_s=5, timeout_s=2)
    sent = probe.due(0.0)
    assert sent is not None
    probe.send_failed(sent, "ConnectionRefusedError: refused")
    reason = probe.deaf(2.0)
    assert reason is not None and "sending it failed: ConnectionRefusedError" in reason


def test_wake_in_is_the_next_probe_or_the_oldest_deadline() -> None:
    probe = FeedProbe("me", interval_s=5, timeout_s=3)
    assert probe.wake_in(0.0) == 0.0  # the first probe is due
    probe.due(0.0)
    assert probe.wake_in(1.0) == pytest.approx(2.0)  # the deadline at 3 comes before the next probe at 5
    probe2 = FeedProbe("me", interval_s=2, timeout_s=3)
    probe2.due(0.0)
    assert probe2.wake_in(1.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "message", [Probe("abc", 3), Ask("n0nce"), Answer("n0nce", "abc", 1234, 2.5), Answer("n", "a", 1, None)]
)
def test_probe_messages_round_trip(message: Probe | Ask | Answer) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize("payload", ["", "not json", "{}", '{"probe": "a"}', '{"answer": "n"}', "[1]"])
def test_malformed_probe_payloads_are_refused(payload: str) -> None:
    with pytest.raises(ProbeDecodeError):
        decode(payload)
