"""Who owns a Discord OAuth token: ``GET {api}/users/@me`` with the Bearer token, cached briefly.

The user id comes from Discord's answer, never from the client. Tokens are kept only as SHA-256 digests
(the cache key) and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import structlog

log = structlog.get_logger(__name__)

CACHE_MAX_ENTRIES = 10_000


class AuthRejected(Exception):
    """Discord says the token is not valid (or its answer names no user)."""


class AuthUnavailable(Exception):
    """Discord could not be asked: timeout, connection failure, rate limit or a server error."""


class DiscordIdentity:
    """Resolves tokens to Discord user ids with a timeout and a short positive cache."""

    def __init__(self, api_base: str, timeout_s: float, cache_s: float) -> None:
        self._url = api_base.rstrip("/") + "/users/@me"
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._cache: dict[bytes, tuple[float, str]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def user_id(self, token: str) -> str:
        """The id of the user owning ``token``; raises AuthRejected or AuthUnavailable."""
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        user_id = await self._ask_discord(token)
        if self._cache_s > 0:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[digest] = (now + self._cache_s, user_id)
        return user_id

    async def _ask_discord(self, token: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(self._url, headers={"Authorization": f"Bearer {token}"}) as resp,
            ):
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
        if self._session is not None:
            await self._session.close()
            self._session = None
