"""Who owns a Discord OAuth token: ``GET {api}/users/@me`` with the Bearer token, cached briefly.

The user id comes from Discord's answer, never from the client. Tokens are kept only as SHA-256 digests
(the cache key) and never logged. Discord bans addresses that send it many invalid requests, so junk
tokens must not become calls: refusals are cached too, one call per token is in flight at a time, calls
are capped per client address and for the process, and a 429's ``Retry-After`` stops every call until then.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import structlog

from serve.limits import RateLimit
from shared.errors import DzoneError

log = structlog.get_logger(__name__)

CACHE_MAX_ENTRIES = 10_000
RETRY_AFTER_MAX_S = 600.0  # never believe a Retry-After that would lock logins out for longer


class AuthRejected(DzoneError):
    """Discord says the token is not valid (or its answer names no user)."""


class AuthUnavailable(DzoneError):
    """Discord could not be asked: timeout, connection failure, rate limit or a server error."""


class AuthThrottled(AuthUnavailable):
    """We did not ask Discord: this address or the whole process is over its cap of calls per second."""


class DiscordIdentity:
    """Resolves tokens to Discord user ids with a timeout, a short cache of answers both ways, single
    flight per token, call caps per address and per process, and Discord's 429 honoured."""

    def __init__(
        self,
        api_base: str,
        timeout_s: float,
        cache_s: float,
        *,
        failure_cache_s: float = 10.0,
        calls_per_s: float = 20.0,
        calls_per_address_per_s: float = 2.0,
    ) -> None:
        self._url = api_base.rstrip("/") + "/users/@me"
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._failure_cache_s = failure_cache_s
        # digest -> (expires, user id, or None for a token Discord refused)
        self._cache: dict[bytes, tuple[float, str | None]] = {}
        self._in_flight: dict[bytes, asyncio.Task[str]] = {}
        self._process_calls = RateLimit(calls_per_s)
        self._address_calls_per_s = calls_per_address_per_s
        self._address_calls: dict[str, RateLimit] = {}
        self._blocked_until = 0.0  # Discord's Retry-After
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0  # calls made to Discord (for metrics and tests)

    async def user_id(self, token: str, address: str = "?") -> str:
        """The id of the user owning ``token``; raises AuthRejected, AuthThrottled or AuthUnavailable."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            if cached[1] is None:
                raise AuthRejected("Discord refused this token recently")
            return cached[1]
        task = self._in_flight.get(digest)
        if task is None:
            self._admit_call(address)
            task = asyncio.create_task(self._ask_and_remember(digest, token))
            self._in_flight[digest] = task
            task.add_done_callback(lambda _t: self._in_flight.pop(digest, None))
        return await asyncio.shield(task)

    def _admit_call(self, address: str) -> None:
        """Raise unless a call to Discord is allowed now (Retry-After, then the address's, the process's cap)."""
        wait = self._blocked_until - time.monotonic()
        if wait > 0:
            raise AuthUnavailable(f"Discord asked us to wait {wait:.1f}s more (429)")
        bucket = self._address_calls.get(address)
        if bucket is None:
            if len(self._address_calls) >= CACHE_MAX_ENTRIES:
                self._address_calls = {a: b for a, b in self._address_calls.items() if not b.full()}
                if len(self._address_calls) >= CACHE_MAX_ENTRIES:
                    self._address_calls.clear()  # bounded; the process-wide cap still holds
            bucket = self._address_calls[address] = RateLimit(self._address_calls_per_s)
        if not bucket.available():
            raise AuthThrottled("too many Discord logins checked for this address")
        if not self._process_calls.take():
            raise AuthThrottled("too many Discord logins checked right now")
        bucket.take()

    async def _ask_and_remember(self, digest: bytes, token: str) -> str:
        try:
            user_id = await self._ask_discord(token)
        except AuthRejected:
            self._remember(digest, None, self._failure_cache_s)
            raise
        self._remember(digest, user_id, self._cache_s)
        return user_id

    def _remember(self, digest: bytes, user_id: str | None, ttl: float) -> None:
        if ttl <= 0:
            return
        now = time.monotonic()
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[digest] = (now + ttl, user_id)

    async def _ask_discord(self, token: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        self.calls += 1
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(self._url, headers={"Authorization": f"Bearer {token}"}) as resp,
            ):
                if resp.status == 429:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    self._blocked_until = max(self._blocked_until, time.monotonic() + retry_after)
                    log.warning("discord_oauth_rate_limited", retry_after_s=round(retry_after, 3))
                    raise AuthUnavailable(f"Discord rate-limited us for {retry_after:g}s")
                if resp.status in (401, 403):
                    raise AuthRejected(f"Discord answered {resp.status}")
                if resp.status != 200:
                    raise AuthUnavailable(f"Discord answered {resp.status}")
                body = await resp.json(content_type=None)
        except TimeoutError:
            raise AuthUnavailable(f"Discord did not answer within {self._timeout_s:g}s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise AuthUnavailable(f"asking Discord failed: {type(exc).__name__}") from None
        user_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(user_id, str) or not user_id.isdigit():
            raise AuthRejected("Discord's answer names no user id")
        return user_id

    async def close(self) -> None:
        for task in self._in_flight.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(header: str | None) -> float:
    """Seconds from a Retry-After header (Discord sends seconds, maybe fractional); 1 s when unreadable."""
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S) if seconds == seconds else 1.0
