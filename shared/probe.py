"""The feed probe's wire format: what a serve sends to prove its LISTEN connection hears the database.

Each serve NOTIFYs :data:`PROBE_CHANNEL` from its pool (a commit like any writer's) and waits for the
notification on its LISTEN connection (serve/feedprobe.py decides, serve/listener.py does the I/O).
``dzone status`` asks on the same channel; every serve that hears the ask answers on
:data:`ANSWER_CHANNEL`, so a listener that is connected but deaf is told apart from a live one.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from shared.errors import DzoneError

PROBE_CHANNEL = "dzone_probe"
ANSWER_CHANNEL = "dzone_probe_answer"
NOTIFY = "SELECT pg_notify($1, $2)"


class ProbeDecodeError(DzoneError, ValueError):
    """A payload on the probe channels is not one this version understands."""


@dataclass(frozen=True, slots=True)
class Probe:
    """A serve's own round trip: ``sender`` is the serve's instance id, ``seq`` counts its probes."""

    sender: str
    seq: int


@dataclass(frozen=True, slots=True)
class Ask:
    """``dzone status`` asking every serve that hears it to answer on :data:`ANSWER_CHANNEL`."""

    nonce: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A serve's answer to an :class:`Ask`: who it is, its LISTEN backend, its last probe round trip."""

    nonce: str
    instance: str
    listener_pid: int
    round_trip_ms: float | None


def encode(message: Probe | Ask | Answer) -> str:
    if isinstance(message, Probe):
        return orjson.dumps({"probe": message.sender, "seq": message.seq}).decode()
    if isinstance(message, Ask):
        return orjson.dumps({"ask": message.nonce}).decode()
    return orjson.dumps(
        {
            "answer": message.nonce,
            "instance": message.instance,
            "listener_pid": message.listener_pid,
            "round_trip_ms": message.round_trip_ms,
        }
    ).decode()


def decode(payload: str) -> Probe | Ask | Answer:
    """The message of a probe-channel payload; :class:`ProbeDecodeError` if it is not one."""
    try:
        data = orjson.loads(payload)
        if "probe" in data:
            return Probe(str(data["probe"]), int(data["seq"]))
        if "ask" in data:
            return Ask(str(data["ask"]))
        trip = data["round_trip_ms"]
        return Answer(
            str(data["answer"]),
            str(data["instance"]),
            int(data["listener_pid"]),
            None if trip is None else float(trip),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProbeDecodeError(f"not a probe message: {payload[:100]!r}") from exc
