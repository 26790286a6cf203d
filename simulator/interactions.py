"""Application commands in the simulated Discord: registration, INTERACTION_CREATE and the answers.

discord.py registers its command tree with ``PUT /applications/{id}/commands`` (or a guild's), receives an
``INTERACTION_CREATE`` dispatch on the shard of the interaction's guild, and answers through the
interaction routes: ``POST /interactions/{id}/{token}/callback`` within 3 s (a message, or a deferral),
then ``/webhooks/{application_id}/{token}/...`` for the original response and follow-ups. Every answer is
recorded on the interaction's :class:`InteractionRecord`, which tests read (or ``GET /_sim/interactions/{id}``).

Like Discord, a callback later than :data:`CALLBACK_DEADLINE_S` is refused (10062 Unknown interaction),
and the member's ``permissions`` are whatever the test gives: the simulator does not apply a command's
``default_member_permissions`` (a server's admins may override them on Discord, so the bot checks again).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import structlog
from aiohttp import web

from simulator.gateway import GatewayHub
from simulator.rest import API_PREFIX, MAX_REST_BODY, discord_error, discord_json
from simulator.world import (
    TEXT_CHANNEL,
    InvalidValueError,
    SimulatorError,
    UnknownObjectError,
    World,
    member_payload,
    snowflake_time_iso,
    user_payload,
)

log = structlog.get_logger(__name__)

CALLBACK_DEADLINE_S = 3.0  # Discord's: the first answer must come within 3 s of the interaction
EPHEMERAL = 1 << 6  # message flag
CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
APPLICATION_COMMAND = 2  # interaction type
SUB_COMMAND = 1  # option type
MANAGE_GUILD = 1 << 5
RECORDS_KEPT = 1000
MAX_COMMANDS = 100  # Discord's limit per scope


@dataclass
class InteractionRecord:
    """One interaction sent to the bot, and every answer it gave (message payloads, in order)."""

    id: int
    token: str
    guild_id: int
    user_id: int
    command: str  # "dzone hide-me"
    sent_at: float  # time.monotonic()
    callback_type: int | None = None
    callback_s: float | None = None  # from the dispatch to the callback
    ephemeral: bool = False
    messages: list[dict[str, object]] = field(default_factory=list)  # the original response, then follow-ups
    refused: list[str] = field(default_factory=list)  # answers the simulator refused (late callback...)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def deferred(self) -> bool:
        return self.callback_type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE

    @property
    def text(self) -> str | None:
        """The answer the member reads now: the last message's content (None while there is none)."""
        for message in reversed(self.messages):
            content = message.get("content")
            if isinstance(content, str) and content:
                return content
        return None

    async def answer(self, timeout: float = 10.0) -> str:
        """Wait until the interaction has a non-empty answer; return its text."""
        async with asyncio.timeout(timeout):
            while self.text is None:
                self.changed.clear()
                await self.changed.wait()
        assert self.text is not None
        return self.text

    def truth(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "user_id": str(self.user_id),
            "command": self.command,
            "callback_type": self.callback_type,
            "callback_s": self.callback_s,
            "deferred": self.deferred,
            "ephemeral": self.ephemeral,
            "text": self.text,
            "messages": self.messages,
            "refused": self.refused,
        }


class Interactions:
    """Registered commands, interactions sent and their answers; REST and control routes over them."""

    def __init__(self, world: World, hub: GatewayHub) -> None:
        self.world = world
        self.hub = hub
        self.global_commands: list[dict[str, object]] = []
        self.guild_commands: dict[int, list[dict[str, object]]] = {}
        self.records: dict[int, InteractionRecord] = {}
        self.registrations = 0  # bulk overwrites received
        self.registered = asyncio.Event()  # set at each bulk overwrite

    # -- sending an interaction ----------------------------------------------------------------------

    def invoke(
        self,
        guild_id: int,
        user_id: int,
        command: str,
        options: Mapping[str, object] | None = None,
        *,
        permissions: int = 0,
        channel_id: int | None = None,
    ) -> InteractionRecord:
        """A member uses ``command`` ("dzone settings": a group and a subcommand) with ``options``.

        Dispatched as INTERACTION_CREATE to the one session of the guild's shard, like Discord; raises
        when no session covers that shard or the command is not registered.
        """
        guild = self.world.guild(guild_id)
        member = self.world.member(guild_id, user_id)
        names = command.split()
        if not 1 <= len(names) <= 2:
            raise InvalidValueError("command is a name, or a group and a subcommand: 'dzone hide-me'")
        registered = self._command(guild_id, names[0])
        if registered is None:
            raise UnknownObjectError(f"no command {names[0]!r} is registered for guild {guild_id}")
        typed = [
            {"name": key, "type": _option_type(value), "value": value}
            for key, value in (options or {}).items()
        ]
        top: list[dict[str, object]] = typed
        if len(names) == 2:
            top = [{"name": names[1], "type": SUB_COMMAND, "options": typed}]
        channel = self._channel(guild_id, channel_id)
        record = InteractionRecord(
            id=self.world.ids.next(),
            token=secrets.token_urlsafe(32),
            guild_id=guild_id,
            user_id=user_id,
            command=command,
            sent_at=time.monotonic(),
        )
        payload = {
            "id": str(record.id),
            "application_id": str(self.world.application_id),
            "type": APPLICATION_COMMAND,
            "token": record.token,
            "version": 1,
            "guild_id": str(guild_id),
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel),
            "channel": {"id": str(channel), "type": TEXT_CHANNEL, "guild_id": str(guild_id)},
            "member": {**member_payload(member), "permissions": str(permissions)},
            "data": {
                "id": str(registered["id"]),
                "name": names[0],
                "type": 1,
                "options": top,
                "guild_id": str(guild_id) if guild_id in self.guild_commands else None,
            },
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": str((1 << 50) - 1),
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        session = next(
            (s for s in self.hub.sessions.values() if s.covers(guild_id) and s.connection is not None), None
        )
        if session is None:
            raise SimulatorError(f"no gateway session covers guild {guild_id}'s shard")
        session.dispatch(b"INTERACTION_CREATE", orjson.dumps(payload))
        self.records[record.id] = record
        while len(self.records) > RECORDS_KEPT:
            del self.records[next(iter(self.records))]
        return record

    def _command(self, guild_id: int, name: str) -> dict[str, object] | None:
        for command in [*self.guild_commands.get(guild_id, []), *self.global_commands]:
            if command.get("name") == name:
                return command
        return None

    def _channel(self, guild_id: int, channel_id: int | None) -> int:
        guild = self.world.guild(guild_id)
        if channel_id is not None:
            return self.world.channel(guild_id, channel_id).id
        for channel in guild.channels.values():
            if channel.type == TEXT_CHANNEL:
                return channel.id
        raise InvalidValueError(f"guild {guild_id} has no text channel to use a command in")

    # -- REST: registration --------------------------------------------------------------------------

    def rest_routes(self) -> list[web.RouteDef]:
        """The routes discord.py calls; registered before the REST catch-all."""
        p = API_PREFIX
        app = f"{p}/applications/{{application_id}}"
        hook = f"{p}/webhooks/{{application_id}}/{{token}}"
        return [
            web.put(f"{app}/commands", self.put_commands),
            web.get(f"{app}/commands", self.get_commands),
            web.put(f"{app}/guilds/{{guild_id}}/commands", self.put_commands),
            web.get(f"{app}/guilds/{{guild_id}}/commands", self.get_commands),
            web.post(f"{p}/interactions/{{interaction_id}}/{{token}}/callback", self.callback),
            web.get(f"{hook}/messages/@original", self.get_original),
            web.patch(f"{hook}/messages/@original", self.edit_message),
            web.patch(f"{hook}/messages/{{message_id}}", self.edit_message),
            web.post(hook, self.followup),
        ]

    def _scope(self, request: web.Request) -> tuple[int | None, web.Response | None]:
        """The guild of a guild-command route (None: global), or the error answer."""
        if request.match_info["application_id"] != str(self.world.application_id):
            return None, discord_error(404, 10002, "Unknown Application")
        raw = request.match_info.get("guild_id")
        if raw is None:
            return None, None
        if not raw.isdigit() or int(raw) not in self.world.guilds:
            return None, discord_error(404, 10004, "Unknown Guild")
        return int(raw), None

    async def put_commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite: the given list replaces the scope's commands (each gets an id)."""
        guild_id, error = self._scope(request)
        if error is not None:
            return error
        body, error = await _json_body(request)
        if error is not None:
            return error
        if not isinstance(body, list) or len(body) > MAX_COMMANDS:
            return discord_error(400, 50035, f"Invalid Form Body: a list of at most {MAX_COMMANDS} commands")
        commands: list[dict[str, object]] = []
        for entry in body:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                return discord_error(400, 50035, "Invalid Form Body: each command needs a name")
            commands.append(
                {
                    **entry,
                    "id": str(self.world.ids.next()),
                    "application_id": str(self.world.application_id),
                    "guild_id": None if guild_id is None else str(guild_id),
                    "version": str(self.world.ids.next()),
                    "type": entry.get("type", 1),
                }
            )
        if guild_id is None:
            self.global_commands = commands
        else:
            self.guild_commands[guild_id] = commands
        self.registrations += 1
        self.registered.set()
        log.info("commands_registered", guild_id=guild_id, names=[c["name"] for c in commands])
        return discord_json(commands)

    async def get_commands(self, request: web.Request) -> web.Response:
        guild_id, error = self._scope(request)
        if error is not None:
            return error
        return discord_json(
            self.global_commands if guild_id is None else self.guild_commands.get(guild_id, [])
        )

    # -- REST: answers -------------------------------------------------------------------------------

    def _record(self, request: web.Request, key: str) -> InteractionRecord | None:
        raw = request.match_info.get(key, "")
        token = request.match_info["token"]
        if key == "application_id":
            if raw != str(self.world.application_id):
                return None
            return next((r for r in self.records.values() if r.token == token), None)
        record = self.records.get(int(raw)) if raw.isdigit() else None
        return record if record is not None and secrets.compare_digest(record.token, token) else None

    async def callback(self, request: web.Request) -> web.Response:
        """The first answer: a message (4) or a deferral (5), once, within the deadline."""
        record = self._record(request, "interaction_id")
        if record is None:
            return discord_error(404, 10062, "Unknown interaction")
        body, error = await _json_body(request)
        if error is not None:
            return error
        if not isinstance(body, dict) or body.get("type") not in (
            CHANNEL_MESSAGE_WITH_SOURCE,
            DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
        ):
            return discord_error(400, 50035, "Invalid Form Body: type must be 4 (message) or 5 (deferred)")
        elapsed = time.monotonic() - record.sent_at
        if record.callback_type is not None:
            record.refused.append("a second callback")
            return discord_error(400, 40060, "Interaction has already been acknowledged.")
        if elapsed > CALLBACK_DEADLINE_S:
            record.refused.append(f"a callback after {elapsed:.2f} s")
            record.changed.set()
            return discord_error(404, 10062, "Unknown interaction")
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        assert isinstance(data, dict)
        record.callback_type = int(body["type"])
        record.callback_s = elapsed
        record.ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
        resource: dict[str, object] = {"type": record.callback_type}
        answer: dict[str, object] = {
            "id": str(record.id),
            "type": APPLICATION_COMMAND,
            "response_message_loading": record.deferred,
            "response_message_ephemeral": record.ephemeral,
        }
        if record.callback_type == CHANNEL_MESSAGE_WITH_SOURCE:
            message = self._message(record, data)
            record.messages.append(message)
            resource["message"] = message
            answer["response_message_id"] = message["id"]
        record.changed.set()
        return discord_json({"interaction": answer, "resource": resource})

    async def get_original(self, request: web.Request) -> web.Response:
        record = self._record(request, "application_id")
        if record is None or not record.messages:
            return discord_error(404, 10008, "Unknown Message")
        return discord_json(record.messages[0])

    async def edit_message(self, request: web.Request) -> web.Response:
        """Edit the original response (after a deferral: its first content) or a follow-up."""
        record = self._record(request, "application_id")
        if record is None or record.callback_type is None:
            return discord_error(404, 10015, "Unknown Webhook")
        body, error = await _json_body(request)
        if error is not None or not isinstance(body, dict):
            return error or discord_error(400, 50035, "Invalid Form Body")
        wanted = request.match_info.get("message_id", "@original")
        index = (
            0
            if wanted == "@original"
            else next((i for i, m in enumerate(record.messages) if m["id"] == wanted), None)
        )
        if index is None:
            return discord_error(404, 10008, "Unknown Message")
        if index == 0 and not record.messages:  # the deferral's placeholder gets its content
            record.messages.append(self._message(record, {"flags": EPHEMERAL if record.ephemeral else 0}))
        message = {**record.messages[index], **_message_fields(body)}
        record.messages[index] = message
        record.changed.set()
        return discord_json(message)

    async def followup(self, request: web.Request) -> web.Response:
        """A follow-up message (after a deferral, the first one fills the original response)."""
        record = self._record(request, "application_id")
        if record is None or record.callback_type is None:
            return discord_error(404, 10015, "Unknown Webhook")
        body, error = await _json_body(request)
        if error is not None or not isinstance(body, dict):
            return error or discord_error(400, 50035, "Invalid Form Body")
        message = self._message(record, body)
        record.messages.append(message)
        record.changed.set()
        return discord_json(message)

    def _message(self, record: InteractionRecord, data: Mapping[str, object]) -> dict[str, object]:
        message_id = self.world.ids.next()
        channel = self._channel(record.guild_id, None)
        return {
            "id": str(message_id),
            "type": 20,  # CHAT_INPUT_COMMAND
            "channel_id": str(channel),
            "author": user_payload(self.world.bot_user),
            "content": "",
            "timestamp": snowflake_time_iso(message_id),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "components": [],
            "application_id": str(self.world.application_id),
            "webhook_id": str(self.world.application_id),
            **_message_fields(data),
        }

    # -- control routes ------------------------------------------------------------------------------

    def control_routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/interactions/invoke", self.control_invoke),
            web.get(f"{prefix}/interactions/{{interaction_id}}", self.control_record),
            web.get(f"{prefix}/commands", self.control_commands),
        ]

    async def control_invoke(self, request: web.Request) -> web.Response:
        """Body: guild_id, user_id, command ("dzone settings"), options {name: value}, permissions."""
        body, error = await _json_body(request)
        if error is not None or not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        try:
            options = body.get("options") or {}
            command = body.get("command")
            if not isinstance(options, dict) or not isinstance(command, str):
                raise InvalidValueError("command (a string) is required; options is an object")
            record = self.invoke(
                _id(body.get("guild_id"), "guild_id"),
                _id(body.get("user_id"), "user_id"),
                command,
                options,
                permissions=_id(body.get("permissions", 0), "permissions"),
            )
        except UnknownObjectError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except SimulatorError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"id": str(record.id)})

    async def control_record(self, request: web.Request) -> web.Response:
        raw = request.match_info["interaction_id"]
        record = self.records.get(int(raw)) if raw.isdigit() else None
        if record is None:
            return web.json_response({"error": f"unknown interaction {raw}"}, status=404)
        return web.json_response(record.truth())

    async def control_commands(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "global": self.global_commands,
                "guilds": {str(g): commands for g, commands in self.guild_commands.items()},
                "registrations": self.registrations,
            }
        )


def _option_type(value: object) -> int:
    """Discord's option type of a value: 5 boolean, 4 integer, 10 number, 3 string."""
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    if isinstance(value, str):
        return 3
    raise InvalidValueError(f"an option value must be a string, number or boolean, not {value!r}")


def _id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise InvalidValueError(f"{what} must be a non-negative integer (a number or a decimal string)")
    return int(value)


def _message_fields(data: Mapping[str, object]) -> dict[str, object]:
    """What an answer may set on its message: content, flags, embeds, components."""
    fields = {key: data[key] for key in ("content", "embeds", "components") if key in data}
    if "flags" in data:
        fields["flags"] = int(str(data["flags"] or 0))
    return fields


async def _json_body(request: web.Request) -> tuple[object, web.Response | None]:
    if request.content_length is not None and request.content_length > MAX_REST_BODY:
        return None, discord_error(413, 40005, "Request entity too large")
    try:
        raw = await request.read()
        return (orjson.loads(raw) if raw.strip() else {}), None
    except orjson.JSONDecodeError:
        return None, discord_error(400, 50109, "The request body contains invalid JSON.")


__all__: Sequence[str] = ["CALLBACK_DEADLINE_S", "MANAGE_GUILD", "InteractionRecord", "Interactions"]
