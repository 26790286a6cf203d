"""Admission (serve/admission.py) without sockets: every answer a passworded join can get, from a token's
absence to Discord's and the membership check's failures. The real Discord path is tests/test_serve_oauth.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import pytest

from serve import frames
from serve.admission import Admission, ValidateCallback
from serve.frames import ConnectRequest
from serve.oauth import AuthRejected, AuthThrottled, AuthUnavailable, DiscordIdentity
from serve.providers import ProviderError
from serve.world import ServerInfo
from shared.settings import ServeSettings

INFO = ServerInfo(key="1", id="club", name="Club", passworded=True)
MEMBER = "42"


@dataclass
class Registered:
    validate_discord_user: ValidateCallback | None = None


class StubIdentity:
    """Discord's answer for a token: a user id, or one of the failures serve/oauth.py raises."""

    def __init__(self, answer: str | Exception) -> None:
        self.answer = answer

    async def user_id(self, token: str, address: str) -> str:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def admission(
    identity: str | Exception = MEMBER, validate: ValidateCallback | None = None, member: Any = True
) -> Admission:
    async def is_member(key: str, user_id: str) -> bool:
        if isinstance(member, Exception):
            raise member
        return bool(member) and user_id == MEMBER

    settings = ServeSettings(database_url=None, oauth_timeout_s=0.05)
    return Admission(settings, cast(DiscordIdentity, StubIdentity(identity)), Registered(validate), is_member)


TOKEN = "member-oauth-token"  # Discord's tokens are longer; the shape is what the serve checks


def connect(token: str | None = TOKEN) -> ConnectRequest:
    return ConnectRequest(server="club", discord_token=token, discord_user={"id": MEMBER})


async def test_a_member_is_admitted_as_its_discord_user():
    assert await admission().authorize(INFO, connect()) == (None, MEMBER)


@pytest.mark.parametrize(
    ("identity", "member", "refusal"),
    [
        (AuthRejected("bad token"), True, frames.ERR_AUTH_FAILED),
        (AuthThrottled("over the cap"), True, frames.ERR_AUTH_THROTTLED),
        (AuthUnavailable("timeout"), True, frames.ERR_AUTH_UNAVAILABLE),
        ("7", True, frames.ERR_NOT_MEMBER),
        (MEMBER, ProviderError("database down"), frames.ERR_UNAVAILABLE),
    ],
)
async def test_each_failure_has_its_own_answer_and_no_user(identity, member, refusal):
    assert await admission(identity, member=member).authorize(INFO, connect()) == (refusal, None)


async def test_no_token_is_asked_to_log_in_without_calling_anyone():
    assert await admission(AuthUnavailable("must not be called")).authorize(INFO, connect(None)) == (
        frames.ERR_AUTH_REQUIRED,
        None,
    )


@pytest.mark.parametrize("token", ["short", "has spaces in it", "x" * 513, "tok\u00e9n-with-accent"])
async def test_a_token_not_shaped_like_discords_is_refused_without_calling_anyone(token):
    """Nothing to hide in logs then (shared/redaction.py finds held tokens by this shape), and no call."""

    async def validate(token: str, user: dict[str, Any], key: str) -> bool:
        raise AssertionError("the callback must not be called")

    for gate in (admission(AuthUnavailable("must not be called")), admission(validate=validate)):
        assert await gate.authorize(INFO, connect(token)) == (frames.ERR_AUTH_FAILED, None)


async def test_a_registered_callback_decides_and_names_no_user():
    calls: list[tuple[str, dict[str, Any], str]] = []

    async def validate(token: str, user: dict[str, Any], key: str) -> bool:
        calls.append((token, user, key))
        return token == TOKEN

    gate = admission(AuthUnavailable("Discord is not asked"), validate)
    assert await gate.authorize(INFO, connect()) == (None, None)
    assert await gate.authorize(INFO, connect("other-oauth-token")) == (frames.ERR_AUTH_FAILED, None)
    assert calls[0] == (TOKEN, {"id": MEMBER}, "1")


async def test_a_callback_that_hangs_counts_as_unavailable():
    async def hangs(token: str, user: dict[str, Any], key: str) -> bool:
        await asyncio.Event().wait()
        return True

    assert await admission(validate=hangs).authorize(INFO, connect()) == (frames.ERR_AUTH_UNAVAILABLE, None)
