"""Wire frames: encode server frames once with orjson, and parse client frames into typed requests.

Every parse failure is a :class:`ClientFrameError` whose message is what the client is shown (rule 14).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import DzoneError

_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")

# d-back's texts where it had one, so the client's alerts read the same.
ERR_BINARY = "Invalid binary encoding"
ERR_JSON = "Invalid JSON"
ERR_NOT_OBJECT = "Invalid message: expected a JSON object"
ERR_NO_TYPE = "Invalid message: 'type' must be a string"
ERR_UNKNOWN_TYPE = "Unknown event type"
ERR_NO_DATA = "Invalid connect: 'data' must be an object"
ERR_SERVER_TYPE = "Invalid connect: 'server' must be a string"
ERR_TOKEN_TYPE = "Invalid connect: 'discordToken' must be a string"
ERR_NOT_FOUND = "Sorry, couldn't connect to that Discord server."
ERR_AUTH_REQUIRED = "This server requires Discord authentication. Please login with Discord."
ERR_AUTH_FAILED = "Discord authentication failed. Please try logging in again."
ERR_NOT_MEMBER = "Your Discord account is not a member of this server."
ERR_AUTH_UNAVAILABLE = "Discord could not be reached to check your login. Please try again in a moment."
ERR_UNAVAILABLE = "This server is temporarily unavailable. Please try again in a moment."
ERR_AUTH_THROTTLED = "Too many Discord logins are being checked right now. Please try again in a moment."
ERR_ACCESS_LOST = "You no longer have access to this Discord server. Pick another server to keep watching."


class ClientFrameError(DzoneError):
    """A client frame the server cannot act on; ``str(exc)`` is the text sent back as an error."""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A valid ``connect``: ``server`` None means the default; the token is never logged."""

    server: str | None
    discord_token: str | None
    discord_user: Mapping[str, Any] | None

    def __repr__(self) -> str:  # keep the token out of any log line or traceback
        return (
            f"ConnectRequest(server={self.server!r}, discord_token={'***' if self.discord_token else None})"
        )


def parse_client_frame(message: str | bytes) -> ConnectRequest:
    """Turn one client frame (text, or binary holding UTF-8) into a ConnectRequest or raise ClientFrameError."""
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            message = bytes(message).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientFrameError(ERR_BINARY) from None
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise ClientFrameError(ERR_JSON) from None
    if not isinstance(frame, dict):
        raise ClientFrameError(ERR_NOT_OBJECT)
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ClientFrameError(ERR_NO_TYPE)
    if kind != "connect":
        raise ClientFrameError(ERR_UNKNOWN_TYPE)
    data = frame.get("data")
    if not isinstance(data, dict):
        raise ClientFrameError(ERR_NO_DATA)
    server = data.get("server")
    if server is not None and not isinstance(server, str):
        raise ClientFrameError(ERR_SERVER_TYPE)
    if server is not None:
        server = server.strip()
        if server in ("", "default"):
            server = None
    token = data.get("discordToken")
    if token is not None and not isinstance(token, str):
        raise ClientFrameError(ERR_TOKEN_TYPE)
    user = data.get("discordUser")
    return ConnectRequest(
        server=server,
        discord_token=token.strip() or None if token is not None else None,
        discord_user=user if isinstance(user, dict) else None,
    )


def encode(frame: Mapping[str, Any]) -> bytes:
    """One server frame as UTF-8 JSON bytes, ready for a text frame."""
    return orjson.dumps(frame)


def error_frame(message: str) -> bytes:
    return encode({"type": "error", "data": {"message": message}})


def presence_frame(
    server_key: str, uid: str, status: str, username: str, role_color: str, *, delete: bool = False
) -> bytes:
    """A presence that always names the member (rule 10), so an unknown uid never becomes a ghost."""
    data: dict[str, Any] = {"uid": uid, "status": status, "username": username, "roleColor": role_color}
    if delete:
        data["delete"] = True
    return encode({"type": "presence", "server": server_key, "data": data})


def join_frame(server_id: str, name: str, users: Mapping[str, Any], client_id: str | None) -> bytes:
    """The server-join: the snapshot of the view, the id the client's links use, and the OAuth client id."""
    data: dict[str, Any] = {"users": users, "request": {"server": server_id}, "serverName": name}
    if client_id:
        data["clientId"] = client_id
    return encode({"type": "server-join", "data": data})


def message_frame(server_key: str, uid: str, text: str, channel: str) -> bytes:
    return encode(
        {"type": "message", "server": server_key, "data": {"uid": uid, "message": text, "channel": channel}}
    )


def client_id_frame(server_key: str, client_id: str) -> bytes:
    return encode({"type": "update-clientid", "server": server_key, "data": {"clientId": client_id}})


def cap_message(text: str, max_chars: int) -> str:
    """Message text as a bubble shows it: on one line, at most ``max_chars`` characters (rule 12)."""
    return _LINE_BREAKS.sub(" ", text)[:max_chars]


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame holding ``payload`` (RFC 6455 5.2; servers never mask)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload
