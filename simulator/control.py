"""The control and truth API under ``/_sim/``: read the truth, steer the scenario, inject events and faults.

Bodies and answers are JSON; ids may be given as numbers or strings (answers use strings, like Discord).
A bad request answers 400, an unknown guild/member/role/channel 404, both as ``{"error": "..."}``.
The routes are documented in docs/simulator.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web

from simulator.engine import UNSET, Unset
from simulator.payloads import AddedGuild, ChannelTruth, LimitsView, MemberTruth, MessagePayload, RoleTruth
from simulator.rest import RestFault
from simulator.steering import Steering
from simulator.world import InvalidValueError, Overwrite, SimulatorError, UnknownObjectError

CONTROL_PREFIX = "/_sim"
MAX_CONTROL_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A request body as decoded (the JSON boundary: every value is checked before use); an action's answer.
Body = dict[str, object]
Answer = Mapping[str, object] | None
Action = Callable[[Body], Awaitable[Answer]]
T = TypeVar("T")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _snowflake(body: Body, key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidValueError(f"{key} is required (a snowflake, as a number or a string)")
    try:
        return int(value)
    except ValueError:
        raise InvalidValueError(f"{key} must be a snowflake, not {value!r}") from None


def _optional_str(body: Body, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidValueError(f"{key} must be a string")
    return value


def _roles(body: Body) -> list[int]:
    roles = body.get("roles", [])
    if not isinstance(roles, list):
        raise InvalidValueError("roles must be a list of role ids")
    return [_snowflake({"role": r}, "role") for r in roles]


def _bits(value: object, what: str) -> int:
    """A permission bit set: Discord sends them as decimal strings; a number is accepted too."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidValueError(f"{what} must be a permission bit set (a decimal string or a number)")
    try:
        bits = int(value)
    except ValueError:
        raise InvalidValueError(f"{what} must be a decimal permission bit set, not {value!r}") from None
    if bits < 0:
        raise InvalidValueError(f"{what} must not be negative")
    return bits


def _overwrites(body: Body) -> list[Overwrite]:
    """``permission_overwrites`` in Discord's shape: [{"id", "type": 0 role / 1 member, "allow", "deny"}]."""
    entries = body.get("permission_overwrites")
    if not isinstance(entries, list):
        raise InvalidValueError("permission_overwrites must be a list")
    overwrites = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidValueError("each permission overwrite is an object")
        kind = entry.get("type")
        if kind not in (0, 1) or isinstance(kind, bool):
            raise InvalidValueError("an overwrite's type is 0 (role) or 1 (member)")
        overwrites.append(
            Overwrite(
                _snowflake(entry, "id"),
                kind,
                allow=_bits(entry.get("allow", "0"), "allow"),
                deny=_bits(entry.get("deny", "0"), "deny"),
            )
        )
    return overwrites


def _optional_bool(body: Body, key: str, default: T) -> bool | T:
    if key not in body:
        return default
    value = body[key]
    if not isinstance(value, bool):
        raise InvalidValueError(f"{key} must be true or false")
    return value


class ControlApi:
    """aiohttp handlers bound to one simulator's steering."""

    def __init__(self, sim: Steering) -> None:
        self.sim = sim

    def routes(self) -> list[web.RouteDef]:
        p = CONTROL_PREFIX
        post: dict[str, Action] = {
            "pause": self.pause,
            "resume": self.resume,
            "presence": self.presence,
            "message": self.message,
            "members/add": self.member_add,
            "members/remove": self.member_remove,
            "members/update": self.member_update,
            "roles/create": self.role_create,
            "roles/rename": self.role_rename,
            "roles/delete": self.role_delete,
            "roles/color": self.role_color,
            "roles/permissions": self.role_permissions,
            "channels/update": self.channel_update,
            "channels/create": self.channel_create,
            "channels/delete": self.channel_delete,
            "guilds/rename": self.guild_rename,
            "guilds/remove": self.guild_remove,
            "oauth/token": self.oauth_token,
            "oauth/rate-limit": self.oauth_rate_limit,
            "faults/drop": self.fault_drop,
            "faults/reconnect": self.fault_reconnect,
            "faults/invalid-session": self.fault_invalid_session,
            "faults/stop-heartbeat-acks": self.fault_stop_acks,
            "faults/resume-heartbeat-acks": self.fault_resume_acks,
            "faults/black-hole": self.fault_black_hole,
            "faults/heartbeat-interval": self.fault_heartbeat_interval,
            "faults/bot-added": self.fault_bot_added,
            "faults/guild-unavailable": self.fault_guild_unavailable,
            "faults/guild-available": self.fault_guild_available,
            "faults/end-sessions": self.fault_end_sessions,
            "faults/rest": self.fault_rest,
            "faults/chunks": self.fault_chunks,
            "faults/close": self.fault_close,
            "faults/delay-dispatches": self.fault_delay,
            "faults/duplicate-dispatches": self.fault_duplicate,
            "limits": self.limits,
        }
        routes = [web.get(f"{p}/state", self.state), web.get(f"{p}/stats", self.stats)]
        routes += [web.post(f"{p}/{name}", self._wrap(action)) for name, action in post.items()]
        return routes

    def _wrap(self, action: Action) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.content_length is not None and request.content_length > MAX_CONTROL_BODY:
                return _json({"error": "request body too large"}, status=413)
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                return _json({"error": "the body is not valid JSON"}, status=400)
            if not isinstance(body, dict):
                return _json({"error": "the body must be a JSON object"}, status=400)
            try:
                result = await action(body)
            except UnknownObjectError as exc:
                return _json({"error": str(exc)}, status=404)
            except SimulatorError as exc:
                return _json({"error": str(exc)}, status=400)
            return _json({"ok": True} if result is None else result)

        return handler

    async def state(self, request: web.Request) -> web.StreamResponse:
        return _json(self.sim.state())

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return _json(self.sim.stats())

    async def pause(self, body: Body) -> None:
        self.sim.pause()

    async def resume(self, body: Body) -> None:
        self.sim.resume()

    async def presence(self, body: Body) -> None:
        status = body.get("status")
        if not isinstance(status, str):
            raise InvalidValueError("status is required")
        await self.sim.set_presence(_snowflake(body, "guild_id"), _snowflake(body, "user_id"), status)

    async def message(self, body: Body) -> MessagePayload:
        content = body.get("content")
        if not isinstance(content, str):
            raise InvalidValueError("content is required")
        return await self.sim.send_message(
            _snowflake(body, "guild_id"), _snowflake(body, "channel_id"), _snowflake(body, "user_id"), content
        )

    async def member_add(self, body: Body) -> MemberTruth:
        bot = body.get("bot", False)
        if not isinstance(bot, bool):
            raise InvalidValueError("bot must be true or false")
        return await self.sim.add_member(
            _snowflake(body, "guild_id"),
            user_id=_snowflake(body, "user_id") if body.get("user_id") is not None else None,
            username=_optional_str(body, "username"),
            global_name=_optional_str(body, "global_name"),
            nick=_optional_str(body, "nick"),
            bot=bot,
            status=_optional_str(body, "status"),
            roles=_roles(body),
        )

    async def member_remove(self, body: Body) -> None:
        await self.sim.remove_member(_snowflake(body, "guild_id"), _snowflake(body, "user_id"))

    async def member_update(self, body: Body) -> MemberTruth:
        return await self.sim.update_member(
            _snowflake(body, "guild_id"),
            _snowflake(body, "user_id"),
            nick=_optional_str(body, "nick") if "nick" in body else UNSET,
            roles=_roles(body) if "roles" in body else UNSET,
        )

    async def role_create(self, body: Body) -> RoleTruth:
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidValueError("name is required (a string)")
        return await self.sim.create_role(_snowflake(body, "guild_id"), name, _integer(body, "color", 0))

    async def role_rename(self, body: Body) -> None:
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidValueError("name is required (a string)")
        await self.sim.rename_role(_snowflake(body, "guild_id"), _snowflake(body, "role_id"), name)

    async def role_delete(self, body: Body) -> None:
        await self.sim.delete_role(_snowflake(body, "guild_id"), _snowflake(body, "role_id"))

    async def role_color(self, body: Body) -> None:
        color = body.get("color")
        if isinstance(color, str):
            try:
                color = int(color.removeprefix("#"), 16)
            except ValueError:
                raise InvalidValueError("color must be an integer or a #rrggbb string") from None
        if not isinstance(color, int):
            raise InvalidValueError("color is required")
        await self.sim.set_role_color(_snowflake(body, "guild_id"), _snowflake(body, "role_id"), color)

    async def role_permissions(self, body: Body) -> None:
        permissions = _bits(body.get("permissions"), "permissions")
        await self.sim.set_role_permissions(
            _snowflake(body, "guild_id"), _snowflake(body, "role_id"), permissions
        )

    async def channel_update(self, body: Body) -> ChannelTruth:
        name: str | Unset = UNSET
        if "name" in body:
            raw_name = body["name"]
            if not isinstance(raw_name, str):
                raise InvalidValueError("name must be a string")
            name = raw_name
        return await self.sim.update_channel(
            _snowflake(body, "guild_id"),
            _snowflake(body, "channel_id"),
            overwrites=_overwrites(body) if "permission_overwrites" in body else UNSET,
            nsfw=_optional_bool(body, "nsfw", UNSET),
            name=name,
        )

    async def channel_create(self, body: Body) -> ChannelTruth:
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidValueError("name is required")
        kind = body.get("type", 0)
        if not isinstance(kind, int) or isinstance(kind, bool):
            raise InvalidValueError("type must be 0 (text), 4 (category) or 11 (public thread)")
        return await self.sim.create_channel(
            _snowflake(body, "guild_id"),
            name,
            type=kind,
            parent_id=_snowflake(body, "parent_id") if body.get("parent_id") is not None else None,
            overwrites=_overwrites(body) if "permission_overwrites" in body else (),
            nsfw=_optional_bool(body, "nsfw", False),
        )

    async def channel_delete(self, body: Body) -> None:
        await self.sim.delete_channel(_snowflake(body, "guild_id"), _snowflake(body, "channel_id"))

    async def guild_rename(self, body: Body) -> None:
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidValueError("name is required")
        await self.sim.rename_guild(_snowflake(body, "guild_id"), name)

    async def guild_remove(self, body: Body) -> None:
        await self.sim.remove_guild(_snowflake(body, "guild_id"))

    async def oauth_token(self, body: Body) -> dict[str, str]:
        user_id = _snowflake(body, "user_id") if body.get("user_id") is not None else None
        token = self.sim.issue_oauth_token(user_id)
        owner = self.sim.world.oauth_tokens[token]
        return {"token": token, "user_id": str(owner)}

    async def oauth_rate_limit(self, body: Body) -> None:
        seconds = body.get("retry_after")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 3600:
            raise InvalidValueError("retry_after must be a number of seconds from 0 to 3600")
        self.sim.rate_limit_oauth(float(seconds))

    async def fault_drop(self, body: Body) -> dict[str, int]:
        return {"connections": await self.sim.drop_connections()}

    async def fault_reconnect(self, body: Body) -> dict[str, int]:
        return {"connections": await self.sim.send_reconnect()}

    async def fault_invalid_session(self, body: Body) -> dict[str, int]:
        resumable = body.get("resumable", False)
        if not isinstance(resumable, bool):
            raise InvalidValueError("resumable must be true or false")
        return {"connections": await self.sim.send_invalid_session(resumable=resumable)}

    async def fault_stop_acks(self, body: Body) -> dict[str, int]:
        return {"connections": self.sim.stop_heartbeat_acks()}

    async def fault_resume_acks(self, body: Body) -> dict[str, int]:
        return {"connections": self.sim.resume_heartbeat_acks()}

    async def fault_black_hole(self, body: Body) -> dict[str, int]:
        return {"connections": self.sim.black_hole()}

    async def fault_heartbeat_interval(self, body: Body) -> None:
        self.sim.set_heartbeat_interval(_integer(body, "interval_ms"))

    async def fault_bot_added(self, body: Body) -> AddedGuild:
        return await self.sim.add_guild(_integer(body, "size"))

    async def fault_guild_unavailable(self, body: Body) -> None:
        await self.sim.start_guild_outage(_snowflake(body, "guild_id"))

    async def fault_guild_available(self, body: Body) -> None:
        await self.sim.end_guild_outage(_snowflake(body, "guild_id"))

    async def fault_end_sessions(self, body: Body) -> dict[str, int]:
        return {"sessions": self.sim.end_all_sessions()}

    async def fault_rest(self, body: Body) -> dict[str, int]:
        count = _integer(body, "count", default=1)
        if not 1 <= count <= 100:
            raise InvalidValueError("count must be 1..100")
        fault = RestFault(_integer(body, "status"), _number(body, "retry_after", default=1.0))
        return {"queued": self.sim.queue_rest_faults([fault] * count)}

    async def fault_chunks(self, body: Body) -> None:
        self.sim.set_chunk_faults(
            delay_s=_number(body, "delay_s", default=0.0), drop=_integer(body, "drop", default=0)
        )

    async def fault_close(self, body: Body) -> dict[str, int]:
        return {"connections": await self.sim.close_connections(_integer(body, "code"))}

    async def fault_delay(self, body: Body) -> dict[str, int]:
        return {"connections": self.sim.delay_dispatches(_number(body, "seconds"))}

    async def fault_duplicate(self, body: Body) -> dict[str, int]:
        return {"connections": self.sim.duplicate_dispatches(_number(body, "seconds"))}

    async def limits(self, body: Body) -> LimitsView:
        unknown = set(body) - LIMIT_KEYS
        if unknown:
            raise InvalidValueError(f"unknown limits: {sorted(unknown)}; known: {sorted(LIMIT_KEYS)}")
        token_reset = _optional_bool(body, "token_reset", None)
        numbers: dict[str, Any] = {k: v for k, v in body.items() if k != "token_reset"}  # checked there
        return self.sim.set_limits(**numbers, token_reset=token_reset)


LIMIT_KEYS = frozenset(
    {
        "presence_threshold",
        "member_request_window_s",
        "session_start_total",
        "session_start_remaining",
        "session_start_reset_after_s",
        "max_concurrency",
        "identify_interval_s",
        "token_reset",
    }
)


def _integer(body: Body, key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(f"{key} is required (an integer)")
    return value


def _number(body: Body, key: str, default: float | None = None) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(f"{key} is required (a number)")
    return float(value)
