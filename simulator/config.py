"""Settings of one simulated Discord: its guilds, its traffic, its limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PRIVILEGED_INTENTS = frozenset({"members", "presences", "message_content"})


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Rates are events per second over the whole simulator (Poisson processes).

    Guild sizes count every member, the simulator's bot included. ``guild_sizes`` overrides
    ``guilds`` x ``members``. ``bot_token=None`` accepts any non-empty bot token.
    """

    guilds: int = 2
    members: int = 50
    guild_sizes: Sequence[int] | None = None
    presence_rate: float = 0.0
    message_rate: float = 0.0
    churn: float = 0.0  # joins + leaves (+ a few nickname changes) per second
    seed: int = 0
    bot_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, read it back from Simulator.port
    start_paused: bool = False
    # privileged intents granted to the bot in the "developer portal"; asking for others closes 4014
    privileged_intents: frozenset[str] = field(default=PRIVILEGED_INTENTS)
    recommended_shards: int = 1  # what GET /gateway/bot answers
    heartbeat_interval_ms: int = 41_250
    # limits (every loop bounded)
    max_connections: int = 256
    max_sessions: int = 1024
    max_inbound_frame: int = 15 * 1024  # Discord closes gateway payloads above 4 KiB; be a little lenient
    replay_limit: int = 200_000  # dispatches kept per session for RESUME
    session_ttl_s: float = 120.0  # how long a disconnected session stays resumable
    outbound_high_water: int = 20_000  # the scenario waits while a connection has this many queued frames
    outbound_limit: int = 500_000  # a connection this far behind is dropped (it may RESUME)
    identify_timeout_s: float = 30.0
    # Discord's own limits (simulator/limits.py; each can be switched while running: /_sim/limits)
    presence_threshold: int = 75_000  # a guild with more members gets GUILD_CREATE without presences
    member_request_window_s: float = 30.0  # one all-member request per guild per window (0: no limit)
    session_start_total: int = 1000  # IDENTIFYs per session_start_window_s
    session_start_window_s: float = 86_400.0
    max_concurrency: int = 1
    identify_interval_s: float = 0.0  # one IDENTIFY per max_concurrency bucket per interval (0: any pace)

    def sizes(self) -> list[int]:
        """The member count of each guild, in creation order."""
        sizes = list(self.guild_sizes) if self.guild_sizes is not None else [self.members] * self.guilds
        for size in sizes:
            if size < 1:
                raise ValueError(f"a guild needs at least 1 member (the bot), got {size}")
        return sizes

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        self.sizes()
        for name in ("presence_rate", "message_rate", "churn"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        unknown = self.privileged_intents - PRIVILEGED_INTENTS
        if unknown:
            raise ValueError(f"unknown privileged intents: {sorted(unknown)}")
        if self.recommended_shards < 1:
            raise ValueError("recommended_shards must be >= 1")
        if self.presence_threshold < 1 or self.session_start_total < 1 or self.max_concurrency < 1:
            raise ValueError("presence_threshold, session_start_total and max_concurrency must be >= 1")
        if (
            min(self.member_request_window_s, self.identify_interval_s) < 0
            or self.session_start_window_s <= 0
        ):
            raise ValueError("member_request_window_s and identify_interval_s must be >= 0, the window > 0")
        if self.bot_token is not None and not self.bot_token.strip():
            raise ValueError("bot_token must be non-empty when given")
