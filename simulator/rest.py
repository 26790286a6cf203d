"""The few Discord REST v10 routes discord.py calls at login and in a session, plus the OAuth2 ``users/@me``.

Every answer has the exact header ``Content-Type: application/json``: discord.py compares it for equality
and treats anything else as text.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from simulator.config import SimConfig
from simulator.engine import Engine
from simulator.limits import DiscordLimits
from simulator.world import InvalidValueError, SimulatorError, User, World, user_payload

API_PREFIX = "/api/v10"
# The REST faults /_sim/faults/rest can inject: what Discord's edge answers when it is in trouble.
REST_FAULT_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_QUEUED_REST_FAULTS = 100
MAX_REST_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The application's owner: a fixed account outside every guild.
APPLICATION_OWNER = User(id=100_000_000_000_000_000, username="sim-owner", global_name="Simulator Owner")


def discord_json(data: object, status: int = 200) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status)
    response.headers["Content-Type"] = "application/json"
    return response


def discord_error(status: int, code: int, message: str) -> web.Response:
    return discord_json({"message": message, "code": code}, status=status)


@dataclass(frozen=True, slots=True)
class RestFault:
    """One bot REST answer to replace: ``status``, and for a 429 how long to wait."""

    status: int
    retry_after_s: float = 1.0


def rest_fault_response(fault: RestFault) -> web.Response:
    """The answer Discord gives: a 429 with ``Retry-After`` and ``retry_after``, or a bare 5xx."""
    if fault.status == 429:
        response = discord_json(
            {"message": "You are being rate limited.", "retry_after": fault.retry_after_s, "global": False},
            status=429,
        )
        response.headers["Retry-After"] = f"{fault.retry_after_s:g}"
        response.headers["X-RateLimit-Scope"] = "user"
        response.headers["Via"] = "1.1 google"  # discord.py reads a 429 without it as a Cloudflare ban
        return response
    return discord_error(fault.status, 0, f"{fault.status}: simulated server error")


class RestApi:
    """Handlers for ``/api/v10/...``; ``gateway_url`` is filled in once the port is known."""

    def __init__(
        self, config: SimConfig, world: World, engine: Engine, limits: DiscordLimits | None = None
    ) -> None:
        self.config = config
        self.limits = limits or DiscordLimits()  # the gateway hub's, shared (token reset, budget)
        self.world = world
        self.engine = engine
        self.gateway_url = ""
        self.faults: deque[RestFault] = deque()  # answered, in order, to the next bot requests
        self.faults_served = 0
        # OAuth2 users/@me (Bearer) calls answered, and a window in which they get 429 + Retry-After.
        self.oauth_calls = 0
        self._oauth_limited_until = 0.0

    def queue_faults(self, faults: list[RestFault]) -> int:
        """Answer the next bot-authenticated requests with these errors; returns how many are queued."""
        for fault in faults:
            if fault.status not in REST_FAULT_STATUSES:
                raise InvalidValueError(f"status must be one of {sorted(REST_FAULT_STATUSES)}")
            if not 0 <= fault.retry_after_s <= 60:
                raise InvalidValueError("retry_after must be 0..60 seconds")
        if len(self.faults) + len(faults) > MAX_QUEUED_REST_FAULTS:
            raise InvalidValueError(f"at most {MAX_QUEUED_REST_FAULTS} REST faults may be queued")
        self.faults.extend(faults)
        return len(self.faults)

    @web.middleware
    async def fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A queued fault replaces the answer to the next request the bot makes under ``/api/v10``."""
        if self.faults and request.path.startswith(API_PREFIX) and self._bot_authorized(request):
            self.faults_served += 1
            return rest_fault_response(self.faults.popleft())
        return await handler(request)

    def rate_limit_oauth(self, seconds: float) -> None:
        """Answer every Bearer ``users/@me`` with 429 and ``Retry-After`` for the next ``seconds``."""
        self._oauth_limited_until = time.monotonic() + seconds

    def routes(self) -> list[web.RouteDef]:
        p = API_PREFIX
        return [
            web.get(f"{p}/users/@me", self.users_me),
            web.get(f"{p}/oauth2/applications/@me", self.application),
            web.get(f"{p}/applications/@me", self.application),
            web.get(f"{p}/gateway", self.gateway),
            web.get(f"{p}/gateway/bot", self.gateway_bot),
            web.get(f"{p}/channels/{{channel_id}}/messages", self.channel_messages),
            web.post(f"{p}/channels/{{channel_id}}/messages", self.create_message),
            web.route("*", f"{p}/{{tail:.*}}", self.not_found),
        ]

    # -- authentication -----------------------------------------------------------------------------

    def _bot_authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bot "):
            return False
        token = header[4:].strip()
        if not token:
            return False
        if self.limits.token_reset:
            return False  # Discord reset the token of an app past its identify budget
        expected = self.config.bot_token
        return expected is None or secrets.compare_digest(token.encode(), expected.encode())

    # -- routes -------------------------------------------------------------------------------------

    async def users_me(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            self.oauth_calls += 1
            limited_for = self._oauth_limited_until - time.monotonic()
            if limited_for > 0:
                response = discord_json(
                    {"message": "You are being rate limited.", "retry_after": limited_for, "global": False},
                    status=429,
                )
                response.headers["Retry-After"] = f"{limited_for:.3f}"
                return response
            user_id = self.world.oauth_tokens.get(header[7:].strip())
            user = self.world.users.get(user_id) if user_id is not None else None
            if user is None:
                return discord_error(401, 0, "401: Unauthorized")
            return discord_json({**user_payload(user), "locale": "en-US", "mfa_enabled": False, "flags": 0})
        if not self._bot_authorized(request):
            return discord_error(401, 0, "401: Unauthorized")
        bot = self.world.bot_user
        return discord_json(
            {**user_payload(bot), "verified": True, "mfa_enabled": False, "flags": 0, "locale": "en-US"}
        )

    async def application(self, request: web.Request) -> web.Response:
        if not self._bot_authorized(request):
            return discord_error(401, 0, "401: Unauthorized")
        bot = self.world.bot_user
        return discord_json(
            {
                "id": str(self.world.application_id),
                "name": bot.username,
                "icon": None,
                "description": "d-zone Discord simulator",
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": user_payload(APPLICATION_OWNER),
                "verify_key": "0" * 64,
                "team": None,
                "flags": 0,
                "bot": user_payload(bot),
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }
        )

    async def gateway(self, request: web.Request) -> web.Response:
        return discord_json({"url": self.gateway_url})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        if not self._bot_authorized(request):
            return discord_error(401, 0, "401: Unauthorized")
        return discord_json(
            {
                "url": self.gateway_url,
                "shards": self.config.recommended_shards,
                "session_start_limit": self.limits.session_start.payload(time.monotonic()),
            }
        )

    def _channel_guild_id(self, request: web.Request) -> int | None:
        """The guild owning the path's channel, or None when there is no such channel."""
        try:
            return self.world.channel_owner(int(request.match_info["channel_id"])).id
        except (ValueError, SimulatorError):
            return None

    async def channel_messages(self, request: web.Request) -> web.Response:
        if not self._bot_authorized(request):
            return discord_error(401, 0, "401: Unauthorized")
        guild_id = self._channel_guild_id(request)
        if guild_id is None:
            return discord_error(404, 10003, "Unknown Channel")
        channel = self.world.channel(guild_id, int(request.match_info["channel_id"]))
        try:
            limit = min(max(int(request.query.get("limit", "50")), 1), 100)
        except ValueError:
            return discord_error(400, 50035, "Invalid Form Body: limit")
        newest_first = list(reversed(channel.messages))[:limit]
        return discord_json(newest_first)

    async def create_message(self, request: web.Request) -> web.Response:
        """The bot posts a message: stored, dispatched as MESSAGE_CREATE like any other."""
        if not self._bot_authorized(request):
            return discord_error(401, 0, "401: Unauthorized")
        guild_id = self._channel_guild_id(request)
        if guild_id is None:
            return discord_error(404, 10003, "Unknown Channel")
        if request.content_length is not None and request.content_length > MAX_REST_BODY:
            return discord_error(413, 40005, "Request entity too large")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return discord_error(400, 50109, "The request body contains invalid JSON.")
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return discord_error(400, 50006, "Cannot send an empty message")
        try:
            message = self.engine.send_message(
                guild_id, int(request.match_info["channel_id"]), self.world.bot_user.id, content
            )
        except SimulatorError as exc:
            return discord_error(400, 50006, f"Cannot send message: {exc}")
        return discord_json(message)

    async def not_found(self, request: web.Request) -> web.Response:
        return discord_error(
            404, 0, f"404: Not Found (the simulator does not implement {request.method} {request.path})"
        )
