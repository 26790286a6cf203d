"""Discord's gateway (protocol v10, JSON, optional zlib-stream) over aiohttp WebSockets.

A :class:`Session` outlives its connection: dispatches keep being numbered and buffered while the client
is away, so a RESUME replays exactly what it missed. Every dispatch is queued on the session's connection
in the same synchronous step that changes the truth, so per-connection order equals truth order.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from enum import IntEnum

import orjson
import structlog
from aiohttp import WSMsgType, web

from shared.discord_rules import shard_of
from shared.errors import DzoneError
from simulator.config import SimConfig
from simulator.limits import (
    DiscordLimits,
    IdentifyPacing,
    MemberRequestLimit,
    SessionStartBudget,
)
from simulator.payloads import MembersChunkPayload, Payload
from simulator.world import (
    Guild,
    World,
    guild_create_payload,
    member_payload,
    presence_payload,
    user_payload,
)

log = structlog.get_logger(__name__)

INTENT_GUILDS = 1 << 0
INTENT_MEMBERS = 1 << 1
INTENT_PRESENCES = 1 << 8
INTENT_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENT_BITS = {
    "members": INTENT_MEMBERS,
    "presences": INTENT_PRESENCES,
    "message_content": INTENT_MESSAGE_CONTENT,
}
# ApplicationFlags.gateway_*_limited: what an unverified bot with the intent switched on has
APPLICATION_FLAG_BITS = {"presences": 1 << 13, "members": 1 << 15, "message_content": 1 << 19}

CHUNK_SIZE = 1000  # Discord's GUILD_MEMBERS_CHUNK size
WRITE_BATCH = 256  # frames per transport.write
WRITE_BUFFER_LIMIT = 1 << 20  # bytes buffered in the transport before the writer waits
INBOUND_BUDGET = 240  # payloads per INBOUND_WINDOW_S (Discord allows 120/60 s; discord.py keeps below it)
INBOUND_WINDOW_S = 60.0
MEMBER_REQUEST_LOG = 1000  # all-member requests remembered (accepted or refused), for tests and stats


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Close(IntEnum):
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


# The close codes the /_sim/faults/close route sends, with Discord's reason text.
SERVER_CLOSE_CODES = {
    int(Close.UNKNOWN_ERROR): "Unknown error.",
    int(Close.SESSION_TIMED_OUT): "Session timed out.",
}


def ws_frame_header(opcode: int, length: int) -> bytes:
    """RFC 6455 header of one unmasked, final frame (what a server sends)."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def _json_int(value: object) -> int:
    """``int()`` of a decoded JSON value (an id may come as a number or a string); TypeError otherwise."""
    if not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {type(value).__name__}")
    return int(value)


def op_frame(op: Op, data: object) -> bytes:
    return orjson.dumps({"op": int(op), "d": data, "s": None, "t": None})


class ProtocolViolationError(DzoneError):
    """The client broke the gateway protocol; ``code`` is the close code Discord uses for it."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """One gateway WebSocket: an ordered outbound queue drained by a writer task, zlib-stream or text."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, *, compress: bool, path: str) -> None:
        self.ws = ws
        self.request = request
        self.path = path
        self._zlib = zlib.compressobj() if compress else None
        self.queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.session: Session | None = None
        self.ack_heartbeats = True
        # faults: a black hole sends nothing at all; frames are held until hold_until (monotonic);
        # dispatches are queued twice until duplicate_until
        self.black_hole = False
        self.hold_until = 0.0
        self.duplicate_until = 0.0
        self.closing = False
        self.frames_sent = 0
        self.high_water = 0
        self._inbound: deque[float] = deque()

    def enqueue(self, frame: bytes) -> None:
        if self.closing:
            return
        self.queue.append(frame)
        if len(self.queue) >= self.high_water:
            self.drained.clear()
        self._wake.set()

    def note_inbound(self) -> None:
        """Count a client payload; too many in the window is Discord's close 4008."""
        now = time.monotonic()
        self._inbound.append(now)
        while self._inbound and self._inbound[0] < now - INBOUND_WINDOW_S:
            self._inbound.popleft()
        if len(self._inbound) > INBOUND_BUDGET:
            raise ProtocolViolationError(Close.RATE_LIMITED, "You are being rate limited.")

    def encode(self, frame: bytes) -> bytes:
        assert self._zlib is not None
        return self._zlib.compress(frame) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    async def run_writer(self) -> None:
        """Send queued frames in order until the connection closes.

        Frames are framed here and written in batches (one ``transport.write`` for up to WRITE_BATCH
        frames): one syscall per frame was the simulator's bottleneck. Server frames are unmasked, so
        framing is a header and the payload; aiohttp's own writes (pong, close) land between batches.
        """
        transport = self.request.transport
        opcode = 0x2 if self._zlib is not None else 0x1
        while not self.closing:
            await self._wake.wait()
            self._wake.clear()
            held = self.hold_until - time.monotonic()
            if held > 0:
                await asyncio.sleep(held)  # a delayed link: everything arrives late, still in order
            while self.queue and not self.closing and not self.black_hole:
                if transport is None or transport.is_closing():
                    self.closing = True
                    break
                batch = [self.queue.popleft() for _ in range(min(WRITE_BATCH, len(self.queue)))]
                parts: list[bytes] = []
                for frame in batch:
                    payload = self.encode(frame) if self._zlib is not None else frame
                    parts.append(ws_frame_header(opcode, len(payload)))
                    parts.append(payload)
                transport.write(b"".join(parts))
                self.frames_sent += len(batch)
                if len(self.queue) < self.high_water // 2:
                    self.drained.set()
                # flow control: let the kernel take what is buffered before writing more (the transport
                # has no public "drained" event on the server side, so poll its buffer size)
                while transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT and not transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)  # let readers (heartbeats) and the scenario run between batches
            self.drained.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self._wake.set()
        self.drained.set()
        await self.ws.close(code=code, message=reason.encode()[:120])

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure, as the client sees it)."""
        self.closing = True
        self._wake.set()
        self.drained.set()
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class Session:
    """A gateway session: its shard, intents, sequence counter and the dispatches kept for RESUME."""

    def __init__(
        self,
        *,
        shard_id: int,
        shard_count: int,
        intents: int,
        large_threshold: int,
        replay_limit: int,
    ) -> None:
        self.id = secrets.token_hex(16)
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.intents = intents
        self.large_threshold = large_threshold
        self.seq = 0
        self.replay: deque[tuple[int, bytes]] = deque()
        self.replay_limit = replay_limit
        self.connection: Connection | None = None
        self.disconnected_at: float | None = None

    def covers(self, guild_id: int) -> bool:
        return shard_of(guild_id, self.shard_count) == self.shard_id

    def has(self, intent: int) -> bool:
        return bool(self.intents & intent)

    def dispatch(self, event: bytes, data: bytes) -> None:
        """Number, keep and (if connected) queue one dispatch; ``event`` and ``data`` are JSON-ready bytes."""
        self.seq += 1
        frame = b'{"op":0,"s":%d,"t":"%s","d":%s}' % (self.seq, event, data)
        self.replay.append((self.seq, frame))
        if len(self.replay) > self.replay_limit:
            self.replay.popleft()
        connection = self.connection
        if connection is not None:
            connection.enqueue(frame)
            if connection.duplicate_until and time.monotonic() < connection.duplicate_until:
                connection.enqueue(frame)  # the same dispatch (same seq) twice in a row

    def acknowledge(self, seq: int) -> None:
        """The client has seen everything up to ``seq`` (from its heartbeat): no need to keep it."""
        replay = self.replay
        while replay and replay[0][0] <= seq:
            replay.popleft()

    def frames_after(self, seq: int) -> list[bytes] | None:
        """Dispatches after ``seq`` for a RESUME, or None when some of them are no longer kept."""
        if seq > self.seq or seq < 0:
            return None
        missed = [frame for s, frame in self.replay if s > seq]
        if len(missed) != self.seq - seq:
            return None
        return missed


def limits_of(config: SimConfig) -> DiscordLimits:
    """Discord's limits as configured at start (switchable afterwards on the hub's object)."""
    return DiscordLimits(
        presence_threshold=config.presence_threshold,
        member_requests=MemberRequestLimit(config.member_request_window_s),
        session_start=SessionStartBudget(
            total=config.session_start_total,
            remaining=config.session_start_total,
            window_s=config.session_start_window_s,
            max_concurrency=config.max_concurrency,
        ),
        identify_pacing=IdentifyPacing(config.identify_interval_s),
    )


class GatewayHub:
    """All sessions and connections; fans a dispatch out to the sessions that should see it."""

    def __init__(self, config: SimConfig, world: World, limits: DiscordLimits | None = None) -> None:
        self.config = config
        self.world = world
        self.limits = limits or limits_of(config)
        # (monotonic time, guild id, nonce, retry_after or None when accepted) of all-member requests
        self.member_request_log: deque[tuple[float, int, object, float | None]] = deque(
            maxlen=MEMBER_REQUEST_LOG
        )
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.resume_gateway_url = ""  # set by the Simulator once its port is known
        self.counters: dict[str, int] = {
            "identify": 0,
            "resume": 0,
            "resume_failed": 0,
            "sessions_expired": 0,
            "dispatch": 0,
            "member_chunks": 0,
            "member_chunks_dropped": 0,
            "member_requests_rate_limited": 0,
            "identify_over_budget": 0,
            "identify_too_fast": 0,
            "connections_total": 0,
        }
        self.connections_by_path: dict[str, int] = {}
        self.heartbeat_interval_ms = config.heartbeat_interval_ms  # HELLO of new connections
        self.chunk_delay_s = 0.0  # before each GUILD_MEMBERS_CHUNK (fault: slow chunks)
        self.chunks_to_drop = 0  # the next this many chunks are never sent (fault: lost chunks)
        self.dispatched_by_event: dict[str, int] = {}  # fan-out dispatches (guild events), per event name

    # -- fan-out -----------------------------------------------------------------------------------

    def dispatch(
        self,
        event: str,
        guild_id: int,
        intent: int,
        payload: Payload,
        *,
        variant: Callable[[Session], Payload | None] | None = None,
    ) -> None:
        """Send one guild event to every session on the guild's shard that has ``intent``.

        ``variant`` may return a different payload for a session (e.g. no message content without the
        message-content intent); the common payload is encoded once.
        """
        guild = self.world.guilds.get(guild_id)
        if guild is not None and guild.unavailable:
            return  # Discord sends nothing for a guild in an outage
        name = event.encode()
        data = orjson.dumps(payload)
        for session in self.sessions.values():
            if not session.covers(guild_id) or not session.has(intent):
                continue
            alt = variant(session) if variant is not None else None
            session.dispatch(name, data if alt is None else orjson.dumps(alt))
            self.counters["dispatch"] += 1
            self.dispatched_by_event[event] = self.dispatched_by_event.get(event, 0) + 1

    def listening(self, guild_id: int, intent: int) -> bool:
        """Whether any session would receive this guild's events of that intent (skip encoding if not)."""
        guild = self.world.guilds.get(guild_id)
        if guild is not None and guild.unavailable:
            return False
        return any(s.covers(guild_id) and s.has(intent) for s in self.sessions.values())

    def send_guild_create(self, guild: Guild, *, joined: bool) -> int:
        """GUILD_CREATE of one guild, shaped per session (large threshold, presences intent).

        ``joined``: the bot was just added (no ``unavailable`` key: discord.py dispatches guild_join);
        else the guild is available again after an outage (``unavailable: false``: guild_available).
        """
        sent = 0
        for session in self.sessions.values():
            if not session.covers(guild.id) or not session.has(INTENT_GUILDS):
                continue
            payload = guild_create_payload(
                guild,
                bot_user_id=self.world.bot_user.id,
                large_threshold=session.large_threshold,
                with_presences=session.has(INTENT_PRESENCES),
                presence_threshold=self.limits.presence_threshold,
            )
            if joined:
                del payload["unavailable"]
            session.dispatch(b"GUILD_CREATE", orjson.dumps(payload))
            sent += 1
        self.counters["dispatch"] += sent
        self.dispatched_by_event["GUILD_CREATE"] = self.dispatched_by_event.get("GUILD_CREATE", 0) + sent
        return sent

    async def wait_writable(self) -> None:
        """Backpressure for the scenario: wait while a connection is far behind (a black hole never is)."""
        for connection in list(self.connections):
            if not connection.drained.is_set() and not connection.black_hole:
                await connection.drained.wait()

    # -- faults -------------------------------------------------------------------------------------

    def identified(self) -> list[Connection]:
        return [c for c in self.connections if c.session is not None and not c.closing]

    def drop_connections(self) -> int:
        connections = list(self.connections)
        for connection in connections:
            connection.abort()
        return len(connections)

    def send_reconnect(self) -> int:
        connections = self.identified()
        for connection in connections:
            connection.enqueue(op_frame(Op.RECONNECT, None))
        return len(connections)

    def send_invalid_session(self, resumable: bool) -> int:
        connections = self.identified()
        for connection in connections:
            session = connection.session
            assert session is not None
            if not resumable:
                # the session is gone: nothing more is numbered or buffered for it
                self.sessions.pop(session.id, None)
                session.connection = None
                connection.session = None
            connection.enqueue(op_frame(Op.INVALID_SESSION, resumable))
        return len(connections)

    def stop_heartbeat_acks(self) -> int:
        """Stop acknowledging heartbeats on the current connections (new connections get ACKs again)."""
        connections = list(self.connections)
        for connection in connections:
            connection.ack_heartbeats = False
        return len(connections)

    def resume_heartbeat_acks(self) -> int:
        connections = list(self.connections)
        for connection in connections:
            connection.ack_heartbeats = True
        return len(connections)

    def black_hole(self) -> int:
        """Current connections stay open but send nothing more, not even heartbeat ACKs (a zombie link)."""
        connections = list(self.connections)
        for connection in connections:
            connection.black_hole = True
            connection.ack_heartbeats = False
        return len(connections)

    def delay_dispatches(self, seconds: float) -> int:
        """Current connections send nothing for ``seconds``, then everything held, in order."""
        until = time.monotonic() + seconds
        connections = self.identified()
        for connection in connections:
            connection.hold_until = until
        return len(connections)

    def duplicate_dispatches(self, seconds: float) -> int:
        """For ``seconds``, current connections get every dispatch twice (same ``s``), back to back."""
        until = time.monotonic() + seconds
        connections = self.identified()
        for connection in connections:
            connection.duplicate_until = until
        return len(connections)

    async def close_connections(self, code: int) -> int:
        """Close every identified connection with a close code, as Discord does on its own errors.

        4009 (session timed out) also ends the session, as on Discord: the RESUME that follows fails.
        """
        if code not in SERVER_CLOSE_CODES:
            raise ValueError(f"close code must be one of {sorted(SERVER_CLOSE_CODES)}, not {code}")
        connections = self.identified()
        for connection in connections:
            session = connection.session
            if code == Close.SESSION_TIMED_OUT and session is not None:
                self._forget(session)
                connection.session = None
        await asyncio.gather(
            *(c.close(code, SERVER_CLOSE_CODES[code]) for c in connections), return_exceptions=True
        )
        return len(connections)

    def end_all_sessions(self) -> int:
        """Every session ends and every connection drops: the clients' RESUME gets INVALID_SESSION false."""
        count = len(self.sessions)
        for session in list(self.sessions.values()):
            self._forget(session)
        for connection in list(self.connections):
            connection.session = None
            connection.abort()
        return count

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        session.connection = None
        self.counters["sessions_expired"] += 1

    def expire_sessions(self) -> None:
        """Forget disconnected sessions older than the TTL (they can no longer RESUME)."""
        deadline = time.monotonic() - self.config.session_ttl_s
        for session_id, session in list(self.sessions.items()):
            if session.connection is None and (session.disconnected_at or 0) < deadline:
                del self.sessions[session_id]

    def stats(self) -> dict[str, object]:
        return {
            **self.counters,
            "connections": len(self.connections),
            "connections_by_path": dict(self.connections_by_path),
            "dispatched_by_event": dict(self.dispatched_by_event),
            "sessions": len(self.sessions),
            "queued_frames": sum(len(c.queue) for c in self.connections),
        }

    # -- the WebSocket endpoint ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for ``/gateway`` and ``/gateway/resume``."""
        cfg = self.config
        if len(self.connections) >= cfg.max_connections:
            return web.json_response({"message": "too many gateway connections", "code": 0}, status=503)
        query = request.query
        ws = web.WebSocketResponse(max_msg_size=cfg.max_inbound_frame, compress=False, autoping=True)
        await ws.prepare(request)
        connection = Connection(
            ws, request, compress=query.get("compress") == "zlib-stream", path=request.path
        )
        connection.high_water = cfg.outbound_high_water
        self.connections.add(connection)
        self.counters["connections_total"] += 1
        self.connections_by_path[request.path] = self.connections_by_path.get(request.path, 0) + 1
        writer = asyncio.create_task(connection.run_writer(), name="sim-gateway-writer")
        try:
            if query.get("v", "10") != "10":
                raise ProtocolViolationError(Close.INVALID_API_VERSION, "Invalid API version.")
            if query.get("encoding", "json") != "json":
                raise ProtocolViolationError(Close.DECODE_ERROR, "Only encoding=json is simulated.")
            if query.get("compress") not in (None, "zlib-stream"):
                raise ProtocolViolationError(Close.DECODE_ERROR, "Only compress=zlib-stream is simulated.")
            connection.enqueue(op_frame(Op.HELLO, {"heartbeat_interval": self.heartbeat_interval_ms}))
            await self._read_loop(connection)
        except ProtocolViolationError as exc:
            log.info("gateway_close", code=int(exc.code), reason=exc.reason, path=request.path)
            await connection.close(exc.code, exc.reason)
        finally:
            connection.closing = True
            self.connections.discard(connection)
            session = connection.session
            if session is not None and session.connection is connection:
                session.connection = None
                session.disconnected_at = time.monotonic()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    async def _read_loop(self, connection: Connection) -> None:
        ws = connection.ws
        # Discord closes a session that misses heartbeats; allow two intervals plus slack.
        beat_timeout = self.heartbeat_interval_ms / 1000 * 2 + 10
        while not connection.closing:
            timeout = beat_timeout if connection.session is not None else self.config.identify_timeout_s
            try:
                message = await ws.receive(timeout=timeout)
            except TimeoutError:
                raise ProtocolViolationError(Close.SESSION_TIMED_OUT, "Session timed out.") from None
            if message.type == WSMsgType.TEXT:
                raw: str | bytes = message.data
            elif message.type == WSMsgType.BINARY:
                raw = message.data
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            else:
                continue
            connection.note_inbound()
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ProtocolViolationError(Close.DECODE_ERROR, "Error while decoding payload.") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("op"), int):
                raise ProtocolViolationError(Close.DECODE_ERROR, "Payload is not a gateway object.")
            await self._on_payload(connection, payload["op"], payload.get("d"))

    async def _on_payload(self, connection: Connection, op: int, data: object) -> None:
        if op == Op.HEARTBEAT:
            if connection.session is not None and isinstance(data, int):
                connection.session.acknowledge(data)
            if connection.ack_heartbeats:
                connection.enqueue(op_frame(Op.HEARTBEAT_ACK, None))
            return
        if op == Op.IDENTIFY:
            self._identify(connection, data)
            return
        if op == Op.RESUME:
            self._resume(connection, data)
            return
        if connection.session is None:
            if op in (Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE, Op.REQUEST_GUILD_MEMBERS):
                raise ProtocolViolationError(Close.NOT_AUTHENTICATED, "Not authenticated.")
            raise ProtocolViolationError(Close.UNKNOWN_OPCODE, f"Unknown opcode {op}.")
        if op == Op.REQUEST_GUILD_MEMBERS:
            await self._request_members(connection.session, data)
        elif op in (Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE):
            return  # accepted and ignored: the bot's own presence and voice are not simulated
        else:
            raise ProtocolViolationError(Close.UNKNOWN_OPCODE, f"Unknown opcode {op}.")

    # -- IDENTIFY / RESUME --------------------------------------------------------------------------

    def _check_token(self, token: object) -> None:
        expected = self.config.bot_token
        if not isinstance(token, str) or not token.strip():
            raise ProtocolViolationError(Close.AUTHENTICATION_FAILED, "Authentication failed.")
        token = token.removeprefix("Bot ").strip()
        if expected is not None and not secrets.compare_digest(token.encode(), expected.encode()):
            raise ProtocolViolationError(Close.AUTHENTICATION_FAILED, "Authentication failed.")
        if self.limits.token_reset:
            raise ProtocolViolationError(Close.AUTHENTICATION_FAILED, "Authentication failed.")

    def _spend_identify(self, connection: Connection, shard_id: int) -> bool:
        """Charge one IDENTIFY to the app: False (op 9 sent) when it came too fast for its bucket.

        Past the budget Discord ends every session of the app and resets its token: logins fail until an
        operator restores it (here ``token_reset`` is cleared through the control API).
        """
        now = time.monotonic()
        limits = self.limits
        if not limits.identify_pacing.allow(shard_id, limits.session_start.max_concurrency, now):
            self.counters["identify_too_fast"] += 1
            log.info("gateway_identify_too_fast", shard=shard_id)
            connection.enqueue(op_frame(Op.INVALID_SESSION, False))
            return False
        if not limits.session_start.spend(now):
            self.counters["identify_over_budget"] += 1
            log.warning("gateway_identify_over_budget", total=limits.session_start.total)
            limits.token_reset = True
            for session in list(self.sessions.values()):
                self._forget(session)
            for other in list(self.connections):
                if other is not connection:
                    other.session = None
                    other.abort()
            raise ProtocolViolationError(Close.AUTHENTICATION_FAILED, "Authentication failed.")
        return True

    def _identify(self, connection: Connection, data: object) -> None:
        if connection.session is not None:
            raise ProtocolViolationError(Close.ALREADY_AUTHENTICATED, "Already authenticated.")
        if not isinstance(data, dict):
            raise ProtocolViolationError(Close.DECODE_ERROR, "IDENTIFY needs an object.")
        self._check_token(data.get("token"))
        shard = data.get("shard", [0, 1])
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(isinstance(x, int) for x in shard)
            or not 0 <= shard[0] < shard[1]
        ):
            raise ProtocolViolationError(Close.INVALID_SHARD, "Invalid shard.")
        if not self._spend_identify(connection, shard[0]):
            return
        # a session refused for its intents was still started: it spent its IDENTIFY, as on Discord
        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents >= 1 << 26:
            raise ProtocolViolationError(Close.INVALID_INTENTS, "Invalid intent(s).")
        for name, bit in PRIVILEGED_INTENT_BITS.items():
            if intents & bit and name not in self.config.privileged_intents:
                raise ProtocolViolationError(Close.DISALLOWED_INTENTS, "Disallowed intent(s).")
        large_threshold = data.get("large_threshold", 50)
        if not isinstance(large_threshold, int) or not 50 <= large_threshold <= 250:
            large_threshold = 50
        self.expire_sessions()
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolViolationError(Close.UNKNOWN_ERROR, "Too many sessions.")
        session = Session(
            shard_id=shard[0],
            shard_count=shard[1],
            intents=intents,
            large_threshold=large_threshold,
            replay_limit=self.config.replay_limit,
        )
        self.sessions[session.id] = session
        session.connection = connection
        connection.session = session
        self.counters["identify"] += 1
        log.info("gateway_identify", session=session.id[:8], shard=shard, intents=intents)
        # READY and every GUILD_CREATE are queued in this same synchronous step: no event slips between.
        self._send_ready(session)

    def _send_ready(self, session: Session) -> None:
        world = self.world
        guilds = [g for g in world.guilds.values() if session.covers(g.id)]
        flags = 0
        for name in self.config.privileged_intents:
            flags |= APPLICATION_FLAG_BITS[name]
        me = {**user_payload(world.bot_user), "verified": True, "mfa_enabled": False, "flags": 0}
        ready = {
            "v": 10,
            "user": me,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "shard": [session.shard_id, session.shard_count],
            "application": {"id": str(world.application_id), "flags": flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["dzone-simulator"],
        }
        session.dispatch(b"READY", orjson.dumps(ready))
        with_presences = session.has(INTENT_PRESENCES)
        world_limits = self.limits
        for guild in guilds:
            if guild.unavailable:
                continue  # listed unavailable in READY; its GUILD_CREATE comes when the outage ends
            payload = guild_create_payload(
                guild,
                bot_user_id=world.bot_user.id,
                large_threshold=session.large_threshold,
                with_presences=with_presences,
                presence_threshold=world_limits.presence_threshold,
            )
            session.dispatch(b"GUILD_CREATE", orjson.dumps(payload))

    def _resume(self, connection: Connection, data: object) -> None:
        if connection.session is not None:
            raise ProtocolViolationError(Close.ALREADY_AUTHENTICATED, "Already authenticated.")
        if not isinstance(data, dict):
            raise ProtocolViolationError(Close.DECODE_ERROR, "RESUME needs an object.")
        self._check_token(data.get("token"))
        session = self.sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        missed = session.frames_after(seq) if session is not None and isinstance(seq, int) else None
        if session is None or missed is None:
            self.counters["resume_failed"] += 1
            log.info("gateway_resume_refused", known_session=session is not None)
            connection.enqueue(op_frame(Op.INVALID_SESSION, False))
            return
        previous = session.connection
        if previous is not None:
            # the client came back before we saw the old socket die: the new one wins
            previous.session = None
            previous.abort()
        session.connection = connection
        session.disconnected_at = None
        connection.session = session
        for frame in missed:
            connection.enqueue(frame)
        session.dispatch(b"RESUMED", b'{"_trace":["dzone-simulator"]}')
        self.counters["resume"] += 1
        log.info("gateway_resume", session=session.id[:8], replayed=len(missed))

    # -- REQUEST_GUILD_MEMBERS ----------------------------------------------------------------------

    async def _request_members(self, session: Session, data: object) -> None:
        if not isinstance(data, dict):
            raise ProtocolViolationError(Close.DECODE_ERROR, "REQUEST_GUILD_MEMBERS needs an object.")
        raw_ids = data.get("guild_id")
        guild_ids: Iterable[object] = raw_ids if isinstance(raw_ids, list) else [raw_ids]
        query = data.get("query")
        user_ids = data.get("user_ids")
        limit = data.get("limit", 0)
        nonce = data.get("nonce")
        presences = bool(data.get("presences")) and session.has(INTENT_PRESENCES)
        if not isinstance(limit, int) or limit < 0:
            raise ProtocolViolationError(Close.DECODE_ERROR, "Invalid limit.")
        if query is None and user_ids is None:
            raise ProtocolViolationError(Close.DECODE_ERROR, "Either query or user_ids is required.")
        if isinstance(nonce, str) and len(nonce) > 32:
            nonce = None  # Discord ignores nonces longer than 32 bytes
        for raw_id in guild_ids:
            try:
                guild_id = _json_int(raw_id)
            except (TypeError, ValueError):
                raise ProtocolViolationError(Close.DECODE_ERROR, "Invalid guild_id.") from None
            guild = self.world.guilds.get(guild_id)
            if not session.covers(guild_id) or guild is None or guild.unavailable:
                continue  # Discord answers nothing for a guild not on this shard (or in an outage)
            every_member = query == "" and limit == 0 and user_ids is None
            if every_member and not session.has(INTENT_MEMBERS):
                log.warning("chunk_request_without_members_intent", guild=guild_id)
                continue
            if every_member and self._member_request_refused(session, guild_id, nonce):
                continue
            await self._send_chunks(session, guild_id, query, user_ids, limit, presences, nonce)

    def _member_request_refused(self, session: Session, guild_id: int, nonce: object) -> bool:
        """One all-member request per guild per window; a later one gets RATE_LIMITED (opcode 8)."""
        now = time.monotonic()
        retry_after = self.limits.member_requests.retry_after(guild_id, now)
        self.member_request_log.append((now, guild_id, nonce, retry_after))
        if retry_after is None:
            return False
        self.counters["member_requests_rate_limited"] += 1
        log.info("gateway_member_request_rate_limited", guild=guild_id, retry_after=round(retry_after, 3))
        limited = {
            "opcode": int(Op.REQUEST_GUILD_MEMBERS),
            "retry_after": round(retry_after, 3),
            "meta": {"guild_id": str(guild_id), "nonce": nonce},
        }
        session.dispatch(b"RATE_LIMITED", orjson.dumps(limited))
        return True

    async def _send_chunks(
        self,
        session: Session,
        guild_id: int,
        query: object,
        user_ids: object,
        limit: int,
        presences: bool,
        nonce: object,
    ) -> None:
        guild = self.world.guilds[guild_id]
        not_found: list[str] = []
        if user_ids is not None:
            wanted = [_json_int(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])][:100]
            members = [guild.members[u] for u in wanted if u in guild.members]
            not_found = [str(u) for u in wanted if u not in guild.members]
        else:
            prefix = str(query).lower()
            members = [
                m
                for m in guild.members.values()
                if not prefix
                or m.user.username.lower().startswith(prefix)
                or (m.nick or "").lower().startswith(prefix)
                or (m.user.global_name or "").lower().startswith(prefix)
            ]
            if limit or prefix:
                members = members[: min(limit or 100, 100) if prefix else limit]
        batches = [members[i : i + CHUNK_SIZE] for i in range(0, len(members), CHUNK_SIZE)] or [[]]
        # Each chunk is a snapshot taken when it is queued; events in between are queued in order, and
        # discord.py keeps a cached member over a chunk's copy, so the client converges on the truth.
        for index, batch in enumerate(batches):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            if guild_id not in self.world.guilds or session.id not in self.sessions:
                return
            if self.chunks_to_drop > 0:
                self.chunks_to_drop -= 1
                self.counters["member_chunks_dropped"] += 1
                continue
            chunk: MembersChunkPayload = {
                "guild_id": str(guild_id),
                "members": [member_payload(m) for m in batch if m.user.id in guild.members],
                "chunk_index": index,
                "chunk_count": len(batches),
            }
            if presences:
                chunk["presences"] = [
                    presence_payload(guild_id, m.user) for m in batch if m.user.status != "offline"
                ]
            if nonce is not None:
                chunk["nonce"] = nonce
            if not_found and index == 0:
                chunk["not_found"] = not_found
            session.dispatch(b"GUILD_MEMBERS_CHUNK", orjson.dumps(chunk))
            self.counters["member_chunks"] += 1
            await asyncio.sleep(0)  # let heartbeats and other connections through between chunks
