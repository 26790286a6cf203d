"""The discord.py side: a client whose handlers only hand state to the writer.

discord.py keeps the gateway (identify, heartbeats, resume, sharding, zlib-stream, rate limits), its
guild, channel and role cache, and the ready/chunking logic. Members are ours: the hot events
(PRESENCE_UPDATE, GUILD_MEMBER_ADD/UPDATE/REMOVE, GUILD_MEMBERS_CHUNK, the members and presences of
GUILD_CREATE) are parsed from their raw payloads into :mod:`ingest.members` by entries we put in
discord.py's parser table (``ConnectionState.parsers``, an internal: tests/test_discordpy_internals.py fails
when it changes). discord.py's member cache is off, so it builds no ``Member`` per event.

The other handlers run synchronously inside :meth:`IngestClient.dispatch` instead of discord.py's
one-task-per-event scheduling. Every handler and parser is wrapped: an exception is logged with the
event and ids, and the worker keeps running.

Full syncs happen on ``guild_available``/``guild_join``, which discord.py dispatches for every guild
after each READY (startup and every re-IDENTIFY) once the member chunks arrived; RESUME replays the
missed events instead, so it needs no sync.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypedDict

import discord
import structlog

from ingest.channels import ChannelRow, channel_rows, readable_message, relay_channel_id
from ingest.chunks import ChunkProgress, members_complete
from ingest.mapping import ROLE_NAME_MAX_CHARS, RoleRow, RoleView, clean_text
from ingest.members import BOT, GuildMembers, LeanMember, presence_status, role_view
from ingest.payloads import (
    GuildCreateEvent,
    MemberEvent,
    MemberRemoveEvent,
    MembersChunkEvent,
    PresencePayload,
    RawParser,
    ReadyEvent,
)
from ingest.presences import HeldPresences
from ingest.writer import GuildSnapshot, Writer
from shared.discord_rules import shard_of

log = structlog.get_logger(__name__)


def ingest_intents(relay_messages: bool) -> discord.Intents:
    """Guilds, members and presences; message content only when chat is relayed."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.members = True
    intents.presences = True
    if relay_messages:
        intents.guild_messages = True
        intents.message_content = True
    return intents


# The parsers of discord.py's table that are replaced by ours (the originals of some still run after).
# How long to wait for the answer to a repeated member request before asking again (doubling).
MEMBER_REQUEST_WAIT_S = 5.0
MEMBER_REQUEST_WAIT_MAX_S = 60.0

LEAN_PARSERS = (
    "READY",
    "GUILD_CREATE",
    "GUILD_MEMBERS_CHUNK",
    "PRESENCE_UPDATE",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_UPDATE",
    "GUILD_MEMBER_REMOVE",
)


def role_of(role: discord.Role) -> RoleView:
    """A discord.py role as the colour rule needs it."""
    return RoleView(role.position, role.id, role.colour.value)


class Sharding(TypedDict, total=False):
    """discord.py's sharding options: ``shard_ids`` left out means every shard of ``shard_count``."""

    shard_count: int | None
    shard_ids: list[int]


class IngestClient(discord.AutoShardedClient):
    """Runs some or all shards; is the writer's GuildSource (members from our table, the rest from discord.py)."""

    writer: Writer

    def __init__(
        self,
        *,
        include_bots: bool,
        relay_messages: bool,
        shard_count: int | None,
        shard_ids: list[int] | None,
        guild_ready_timeout: float,
    ) -> None:
        if shard_ids is not None and shard_count is None:
            raise ValueError("--shard-ids needs --shard-count")
        intents = ingest_intents(relay_messages)
        sharding: Sharding = {"shard_count": shard_count}
        if shard_ids is not None:  # unset: every shard of shard_count
            sharding["shard_ids"] = shard_ids
        super().__init__(
            intents=intents,
            **sharding,
            # discord.py still requests the chunks and waits for them before guild_available; our
            # GUILD_MEMBERS_CHUNK parser fills the table and completes its requests.
            chunk_guilds_at_startup=True,
            guild_ready_timeout=guild_ready_timeout,
            max_messages=None,  # we never look messages up again: no cache
            member_cache_flags=discord.MemberCacheFlags.none(),  # members live in self.members
            status=discord.Status.invisible,
            enable_raw_presences=True,  # PRESENCE_UPDATE is parsed by us; kept as discord.py's own path
        )
        self.include_bots = include_bots
        self.relay_messages = relay_messages
        self.held_presences = HeldPresences()
        self.members: dict[int, GuildMembers] = {}  # guild id -> its member table
        self.event_counts: Counter[str] = Counter()  # dispatched events by name, for /metrics
        self.shard_states: dict[int, str] = {}  # shard -> "connected" | "ready" | "disconnected"
        self.chunk_progress = ChunkProgress()
        self._member_requests: dict[int, asyncio.Task[None]] = {}  # guilds whose members are asked again
        self._members_arrived: dict[int, asyncio.Event] = {}
        self._closing: asyncio.Task[None] | None = None
        self._ingest_handlers: dict[str, Callable[..., None]] = {
            "guild_available": self._on_guild_available,
            "guild_join": self._on_guild_available,
            "guild_remove": self._on_guild_remove,
            "guild_unavailable": self._on_guild_unavailable,
            "guild_update": self._on_guild_update,
            "guild_role_create": self._on_guild_role_create,
            "guild_role_update": self._on_guild_role_update,
            "guild_role_delete": self._on_guild_role_delete,
            "guild_channel_create": self._on_channel_changed,
            "guild_channel_delete": self._on_channel_changed,
            "guild_channel_update": self._on_channel_updated,
            "ready": self._on_ready,
            "shard_ready": self._on_shard_ready,
            "shard_resumed": self._on_shard_resumed,
            "shard_connect": self._on_shard_connect,
            "shard_disconnect": self._on_shard_disconnect,
        }
        if relay_messages:
            self._ingest_handlers["message"] = self._on_message
        self._install_parsers()

    # --- GuildSource --------------------------------------------------------------------------------
    def snapshot(self, server_id: str) -> GuildSnapshot | None:
        guild = self.get_guild(int(server_id))
        table = self.members.get(int(server_id))
        if guild is None or guild.unavailable or table is None or table.unavailable:
            return None
        if self.held_presences.holds(table.id):
            self.held_presences.apply_guild(table)  # members chunked since their presence arrived
        return GuildSnapshot(guild.name, table.rows(self.include_bots))

    def channels(self, server_id: str) -> list[ChannelRow] | None:
        guild = self.get_guild(int(server_id))
        if guild is None or guild.unavailable:
            return None
        return channel_rows(guild)

    def roles(self, server_id: str) -> list[RoleRow] | None:
        guild = self.get_guild(int(server_id))
        if guild is None or guild.unavailable:
            return None
        return [RoleRow(str(role.id), clean_text(role.name, ROLE_NAME_MAX_CHARS)) for role in guild.roles]

    def server_ids(self) -> Iterable[str]:
        return [str(guild.id) for guild in self.guilds if not guild.unavailable]

    def owns(self, server_id: str) -> bool:
        if self.shard_ids is None or self.shard_count is None:
            return True  # every shard is ours
        return shard_of(int(server_id), self.shard_count) in self.shard_ids

    # --- dispatch -------------------------------------------------------------------------------------
    def dispatch(self, event: str, /, *args: object, **kwargs: object) -> None:
        if event == "socket_event_type":
            return  # discord.py's notice of every frame, for on_socket_event_type listeners: we have none
        self.event_counts[event] += 1
        handler = self._ingest_handlers.get(event)
        if handler is not None:
            try:
                handler(*args)
            except Exception as exc:  # logged with context and traceback; the worker goes on
                log.error(
                    "handler_failed",
                    handler_event=event,
                    context=_context(args),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
        super().dispatch(event, *args, **kwargs)

    async def on_error(self, event_method: str, /, *args: object, **kwargs: object) -> None:
        """discord.py's own handler errors (coroutine handlers, parsers) go to our log with context."""
        log.exception("discord_handler_failed", handler_event=event_method, context=_context(args))

    # --- raw parsers: the hot events, from their payloads into self.members ---------------------------
    def _install_parsers(self) -> None:
        parsers = self._connection.parsers
        self._discord_parsers = {name: parsers[name] for name in LEAN_PARSERS}
        # Where a payload enters: discord.py hands the decoded JSON to an untyped entry; ours read it typed.
        ours: dict[str, RawParser] = {
            "READY": self._parse_ready,
            "GUILD_CREATE": self._parse_guild_create,
            "GUILD_MEMBERS_CHUNK": self._parse_members_chunk,
            "PRESENCE_UPDATE": self._parse_presence_update,
            "GUILD_MEMBER_ADD": self._parse_member_add,
            "GUILD_MEMBER_UPDATE": self._parse_member_update,
            "GUILD_MEMBER_REMOVE": self._parse_member_remove,
        }
        for name, parser in ours.items():
            parsers[name] = _guarded(name, parser)

    def _parse_ready(self, data: ReadyEvent) -> None:
        # discord.py replaces the Guild of every guild READY lists (unavailable until its GUILD_CREATE).
        for guild_data in data.get("guilds") or ():
            self._drop_table(int(guild_data["id"]))
        self._discord_parsers["READY"](data)

    def _parse_guild_create(self, data: GuildCreateEvent) -> None:
        if data.get("unavailable") is True:
            self._discord_parsers["GUILD_CREATE"](data)
            return
        guild_id = int(data["id"])
        self._drop_table(guild_id)
        table = GuildMembers(
            guild_id, {view.role_id: view for view in map(role_view, data.get("roles") or ())}
        )
        members = data.get("members") or []
        statuses = {int(p["user"]["id"]): presence_status(p) for p in data.get("presences") or ()}
        table.add_chunk(members, statuses)
        self.members[guild_id] = table  # before discord.py's parser: it may dispatch guild_available
        self_id = str(self._connection.self_id)
        own = [m for m in members if m["user"]["id"] == self_id]  # discord.py keeps only guild.me
        self._discord_parsers["GUILD_CREATE"]({**data, "members": own, "presences": []})

    def _parse_members_chunk(self, data: MembersChunkEvent) -> None:
        guild_id = int(data["guild_id"])
        table = self.members.get(guild_id)
        if table is not None:
            statuses = {int(p["user"]["id"]): presence_status(p) for p in data.get("presences") or ()}
            table.add_chunk(data.get("members") or [], statuses)
            if self.held_presences.holds(guild_id):
                self.held_presences.apply_guild(table)
        index, count = data.get("chunk_index", 0), data.get("chunk_count", 1)
        answered = self.chunk_progress.received(guild_id, data.get("nonce"), index, count)
        if answered and guild_id in self._members_arrived:
            self._members_arrived.pop(guild_id).set()
            log.info("guild_members_complete", server_id=guild_id, members=len(table or ()))
            self.writer.sync_guild(str(guild_id))
        # discord.py's ready logic waits on its chunk request: complete it (with no Member objects).
        self._connection.process_chunk_requests(guild_id, data.get("nonce"), [], index + 1 == count)

    def _parse_presence_update(self, data: PresencePayload) -> None:
        # Only the status can change our row; activities and client statuses are never looked at.
        self.event_counts["presence_update"] += 1
        raw_guild_id = data.get("guild_id")
        if raw_guild_id is None:
            return  # not a guild member's presence
        guild_id = int(raw_guild_id)
        user = data["user"]
        user_id = int(user["id"])
        status = presence_status(data)
        table = self.members.get(guild_id)
        if table is None:
            known = self._connection._get_guild(guild_id) is not None  # READY listed it, no GUILD_CREATE yet
            self.held_presences.drop("guild_unavailable" if known else "unknown_guild")
            return
        member = table.members.get(user_id)
        if member is None or table.unavailable:
            self.held_presences.observe(table, user_id, status)
            return
        renamed = len(user) > 1 and table.rename_user(user_id, user)
        if member.status == status and not renamed:
            return
        member.status = status
        self._put(table, user["id"], member)

    def _parse_member_add(self, data: MemberEvent) -> None:
        table = self.members.get(int(data["guild_id"]))
        if table is not None:
            user_id, member, _ = table.upsert(data)
            if self.held_presences.holds(table.id):
                self.held_presences.apply_member(table, user_id)  # its presence may have come first
            self._put(table, user_id, member)
        self._discord_parsers["GUILD_MEMBER_ADD"](data)  # keeps guild.member_count; dispatches member_join

    def _parse_member_update(self, data: MemberEvent) -> None:
        self.event_counts["member_update"] += 1
        table = self.members.get(int(data["guild_id"]))
        if table is None:
            return
        user_id, member, changed = table.upsert(data)
        if self.held_presences.holds(table.id) and self.held_presences.apply_member(table, user_id):
            changed = True
        if changed:
            self._put(table, user_id, member)

    def _parse_member_remove(self, data: MemberRemoveEvent) -> None:
        guild_id, user_id = int(data["guild_id"]), int(data["user"]["id"])
        table = self.members.get(guild_id)
        if table is not None:
            table.remove(user_id)
        self.held_presences.forget_member(guild_id, user_id)
        self.writer.remove(str(guild_id), str(user_id))
        self._discord_parsers["GUILD_MEMBER_REMOVE"](data)  # keeps guild.member_count

    def _drop_table(self, guild_id: int) -> None:
        if self.members.pop(guild_id, None) is not None:
            self.held_presences.forget_guild(guild_id, superseded=True)
        self._forget_member_download(guild_id)

    def _forget_member_download(self, guild_id: int) -> None:
        """The guild's members will be downloaded anew (new GUILD_CREATE) or are not ours any more."""
        self.chunk_progress.reset(guild_id)
        self._members_arrived.pop(guild_id, None)
        request = self._member_requests.pop(guild_id, None)
        if request is not None:
            request.cancel()

    # --- members asked again: a full sync of a partial table would delete members ---------------------
    def _ask_members_again(self, guild: discord.Guild) -> None:
        if guild.id in self._member_requests:
            return
        self._members_arrived[guild.id] = asyncio.Event()
        task = asyncio.create_task(self._request_members(guild.id), name=f"member-request-{guild.id}")
        self._member_requests[guild.id] = task
        task.add_done_callback(functools.partial(self._member_request_ended, guild.id))

    async def _request_members(self, guild_id: int) -> None:
        """REQUEST_GUILD_MEMBERS until one answer arrives whole; the chunk parser then syncs the guild."""
        arrived = self._members_arrived[guild_id]
        wait_s = MEMBER_REQUEST_WAIT_S
        for attempt in itertools.count(1):
            ws = self._get_websocket(guild_id)
            try:
                await ws.request_chunks(
                    guild_id,
                    "",
                    limit=0,
                    presences=self.intents.presences,
                    nonce=f"dzone-{guild_id}-{attempt}",
                )
            except (discord.ConnectionClosed, OSError) as exc:  # the shard is reconnecting
                log.warning("member_request_not_sent", server_id=guild_id, attempt=attempt, error=repr(exc))
            try:
                await asyncio.wait_for(arrived.wait(), wait_s)
            except TimeoutError:
                log.warning("member_request_unanswered", server_id=guild_id, attempt=attempt, waited_s=wait_s)
                wait_s = min(wait_s * 2, MEMBER_REQUEST_WAIT_MAX_S)
                continue
            return

    def _member_request_ended(self, guild_id: int, task: asyncio.Task[None]) -> None:
        if self._member_requests.get(guild_id) is task:
            del self._member_requests[guild_id]
        if task.cancelled() or task.exception() is None:
            return
        # A bug: without the members this guild would never sync again. End the client loudly (the
        # worker exits non-zero and a supervisor restarts it, which downloads every guild anew).
        log.error("member_request_failed", task=task.get_name(), exc_info=task.exception())
        self._closing = asyncio.create_task(self.close(), name="close-after-member-request-failed")

    async def close(self) -> None:
        for request in self._member_requests.values():
            request.cancel()
        await super().close()

    # --- handlers: each computes rows and hands them over, nothing else ------------------------------
    def _put(self, table: GuildMembers, user_id: int | str, member: LeanMember) -> None:
        if member.flags & BOT and not self.include_bots:
            return
        self.writer.put(table.row(user_id, member))

    def _on_guild_available(self, guild: discord.Guild) -> None:
        table = self.members.get(guild.id)
        cached = len(table) if table is not None else 0
        log.info("guild_available", server_id=guild.id, members=guild.member_count, shard=guild.shard_id)
        if members_complete(self.chunk_progress, guild.id, cached, guild.member_count):
            self.writer.sync_guild(str(guild.id))
            return
        # discord.py stopped waiting for a chunk that never came: its rows stay as they are (a sync of
        # this partial table would delete the missing members) until the members are asked again.
        log.warning(
            "guild_members_incomplete", server_id=guild.id, cached=cached, expected=guild.member_count
        )
        self._ask_members_again(guild)

    def _on_guild_remove(self, guild: discord.Guild) -> None:
        log.info("guild_removed", server_id=guild.id)
        self.members.pop(guild.id, None)
        self._forget_member_download(guild.id)
        self.held_presences.forget_guild(guild.id)
        self.writer.depart_guild(str(guild.id))

    def _on_guild_unavailable(self, guild: discord.Guild) -> None:
        log.info("guild_unavailable", server_id=guild.id)  # an outage: GUILD_CREATE follows, then a sync
        table = self.members.get(guild.id)
        if table is not None:
            table.unavailable = True
        self.held_presences.forget_guild(guild.id, superseded=True)

    def _on_guild_update(self, before: discord.Guild, after: discord.Guild) -> None:
        if before.name != after.name:
            self.writer.rename_guild(str(after.id), after.name)

    def _on_guild_role_create(self, role: discord.Role) -> None:
        table = self.members.get(role.guild.id)
        if table is not None:
            table.set_role(role_of(role))
        self.writer.sync_roles(str(role.guild.id))  # a rule may name it ("hide me from d-zone")

    def _on_guild_role_update(self, before: discord.Role, after: discord.Role) -> None:
        table = self.members.get(after.guild.id)
        if table is not None:
            table.set_role(role_of(after))
            # The colour or the hierarchy changed: every member holding the role may render differently.
            if before.colour != after.colour or before.position != after.position:
                for user_id, member in list(table.holding(after.id)):
                    self._put(table, user_id, member)
        if before.name != after.name:
            self.writer.sync_roles(str(after.guild.id))
        # @everyone's permissions are every channel's base: which channels are public may have changed.
        if after.is_default() and before.permissions != after.permissions:
            self.writer.sync_channels(str(after.guild.id))

    def _on_guild_role_delete(self, role: discord.Role) -> None:
        table = self.members.get(role.guild.id)
        if table is not None:
            holders = list(table.holding(role.id))
            table.delete_role(role.id)
            for user_id, member in holders:
                self._put(table, user_id, member)
        self.writer.sync_roles(str(role.guild.id))

    def _on_channel_changed(self, channel: discord.abc.GuildChannel) -> None:
        self.writer.sync_channels(str(channel.guild.id))

    def _on_channel_updated(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        self.writer.sync_channels(str(after.guild.id))

    def _on_message(self, message: discord.Message) -> None:
        if message.guild is None:
            return
        author = message.author
        if author.bot and not self.include_bots:
            return
        channel_id = relay_channel_id(message.channel)
        if channel_id is None:
            return  # a private thread: invite-only, never public
        table = self.members.get(message.guild.id)
        names = table.display_name_of if table is not None else None
        # The relay rule itself is applied in SQL at the flush (discord_channels), where operators set it.
        self.writer.relay_message(
            str(message.guild.id),
            str(author.id),
            str(channel_id),
            str(message.id),
            readable_message(message, names),
        )

    def _on_ready(self) -> None:
        log.info(
            "gateway_ready", guilds=len(self.guilds), shard_count=self.shard_count, shard_ids=self.shard_ids
        )
        # Guilds of our shards the database still lists but Discord no longer sends were left while away.
        self.writer.reconcile(str(guild.id) for guild in self.guilds)

    def _on_shard_ready(self, shard_id: int) -> None:
        self.shard_states[shard_id] = "ready"
        log.info("shard_ready", shard=shard_id)

    def _on_shard_resumed(self, shard_id: int) -> None:
        self.shard_states[shard_id] = "ready"
        log.info("shard_resumed", shard=shard_id)

    def _on_shard_connect(self, shard_id: int) -> None:
        self.shard_states[shard_id] = "connected"  # READY received; guilds are still being chunked

    def _on_shard_disconnect(self, shard_id: int) -> None:
        self.shard_states[shard_id] = "disconnected"
        log.info("shard_disconnected", shard=shard_id)


def _guarded(event: str, parser: RawParser) -> RawParser:
    """``parser`` with its exceptions logged (event, guild and user ids) instead of ending the shard's loop."""

    def guarded(data: object) -> None:
        try:
            parser(data)
        except Exception as exc:  # logged with context and traceback; the worker goes on
            user = data.get("user") if isinstance(data, dict) else None
            log.error(
                "parser_failed",
                gateway_event=event,
                guild_id=data.get("guild_id", data.get("id")) if isinstance(data, dict) else None,
                user_id=user.get("id") if isinstance(user, dict) else None,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    return guarded


def _context(args: tuple[object, ...]) -> dict[str, dict[str, object]]:
    """Ids of the objects an event carried, for error logs (never their whole repr)."""
    context: dict[str, dict[str, object]] = {}
    for index, arg in enumerate(args):
        guild = getattr(arg, "guild", None)
        context[f"arg{index}"] = {
            "type": type(arg).__name__,
            "id": getattr(arg, "id", None),
            "guild_id": getattr(guild, "id", getattr(arg, "guild_id", None)),
        }
    return context
