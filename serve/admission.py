"""Admission to a passworded server (protocol rule 17): who Discord says the token belongs to, and
whether that user is a member; or the registered ``on_validate_discord_user`` callback instead.

Beside serve/oauth.py (which asks Discord, with its caps and caches); no socket and no state of a server here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from serve import frames, providers
from serve.frames import ConnectRequest
from serve.oauth import AuthRejected, AuthThrottled, AuthUnavailable, DiscordIdentity
from serve.providers import ProviderError
from serve.world import ServerInfo
from shared import redaction
from shared.settings import ServeSettings

log = structlog.get_logger(__name__)

ValidateCallback = Callable[[str, dict[str, Any], str], Awaitable[bool]]
MembershipCheck = Callable[[str, str], Awaitable[bool]]


class ValidateCallbacks(Protocol):
    """The registered callbacks, read at each check (they may be registered after the hub was made)."""

    validate_discord_user: ValidateCallback | None


class Admission:
    """Decides whether a ``connect`` carrying a Discord token may join a passworded server."""

    def __init__(
        self,
        settings: ServeSettings,
        identity: DiscordIdentity,
        callbacks: ValidateCallbacks,
        is_member: MembershipCheck,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._callbacks = callbacks
        self._is_member = is_member

    async def authorize(
        self, info: ServerInfo, request: ConnectRequest, address: str = "?"
    ) -> tuple[str | None, str | None]:
        """(None, Discord user id or None) if the socket may join passworded ``info`` (rule 17), else
        (the error text to send, None)."""
        refusal, user_id = await self._check_token(info, request, address)
        return refusal, (user_id if refusal is None else None)

    async def _check_token(
        self, info: ServerInfo, request: ConnectRequest, address: str
    ) -> tuple[str | None, str | None]:
        token = request.discord_token
        if token is None:
            return frames.ERR_AUTH_REQUIRED, None
        if redaction.TOKEN_SHAPE.fullmatch(token) is None:  # not a Discord token: no call, nothing to hide
            log.info("discord_auth_refused", server=info.key, reason="not the shape of a Discord OAuth token")
            return frames.ERR_AUTH_FAILED, None
        redaction.add_transient(token)  # from here on it may reach a traceback: never a log line
        if self._callbacks.validate_discord_user is not None:
            try:
                ok = await providers.call_provider(
                    "on_validate_discord_user",
                    self._callbacks.validate_discord_user(token, dict(request.discord_user or {}), info.key),
                    self._settings.oauth_timeout_s,
                )
            except ProviderError as exc:
                log.error("discord_validation_failed", server=info.key, error=str(exc))
                return frames.ERR_AUTH_UNAVAILABLE, None
            return (None if ok is True else frames.ERR_AUTH_FAILED), None
        try:
            user_id = await self._identity.user_id(token, address)
        except AuthThrottled as exc:
            log.debug("discord_auth_throttled", server=info.key, peer=address, reason=str(exc))
            return frames.ERR_AUTH_THROTTLED, None
        except AuthRejected as exc:
            log.info("discord_auth_refused", server=info.key, reason=str(exc))
            return frames.ERR_AUTH_FAILED, None
        except AuthUnavailable as exc:
            log.warning("discord_auth_unavailable", server=info.key, reason=str(exc))
            return frames.ERR_AUTH_UNAVAILABLE, None
        try:
            member = await self._is_member(info.key, user_id)
        except ProviderError as exc:
            log.error("membership_check_failed", server=info.key, error=str(exc))
            return frames.ERR_UNAVAILABLE, None
        if not member:
            log.info("discord_auth_not_member", server=info.key, user=user_id)
            return frames.ERR_NOT_MEMBER, None
        return None, user_id
