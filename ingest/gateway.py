"""The discord.py side: a client whose handlers only hand state to the writer.

Hot events (presence, member, message) are handled synchronously inside :meth:`IngestClient.dispatch`
instead of discord.py's one-task-per-event scheduling: each handler is a few attribute reads and a
dict assignment, so a task per event would cost more than the work. Every handler is wrapped: an
exception is logged with the event and ids, and the worker keeps running.

Full syncs happen on ``guild_available``/``guild_join``, which discord.py dispatches for every guild
after each READY (startup and every re-IDENTIFY) once the member chunks arrived; RESUME replays the
missed events instead, so it needs no sync.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import discord
import structlog

from ingest.channels import ChannelRow, channel_rows, readable_message, relay_channel_id
from ingest.mapping import member_row
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


class IngestClient(discord.AutoShardedClient):
    """Runs some or all shards; is the writer's GuildSource (snapshots come from discord.py's cache)."""

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
        sharding: dict[str, Any] = {"shard_count": shard_count}
        if shard_ids is not None:  # unset: every shard of shard_count
            sharding["shard_ids"] = shard_ids
        super().__init__(
            intents=intents,
            **sharding,
            chunk_guilds_at_startup=True,
            guild_ready_timeout=guild_ready_timeout,
            max_messages=None,  # we never look messages up again: no cache
            member_cache_flags=discord.MemberCacheFlags.from_intents(intents),
            status=discord.Status.invisible,
            # every PRESENCE_UPDATE as a raw event first, so one for a member not cached yet is kept
            enable_raw_presences=True,
        )
        self.include_bots = include_bots
        self.relay_messages = relay_messages
        self.held_presences = HeldPresences()
        self.event_counts: Counter[str] = Counter()  # dispatched events by name, for /metrics
        self.shard_states: dict[int, str] = {}  # shard -> "connected" | "ready" | "disconnected"
        self._ingest_handlers: dict[str, Callable[..., None]] = {
            "raw_presence_update": self.held_presences.observe,
            "presence_update": self._on_presence_update,
            "member_join": self._on_member_join,
            "member_update": self._on_member_update,
            "raw_member_remove": self._on_raw_member_remove,
            "user_update": self._on_user_update,
            "guild_available": self._on_guild_available,
            "guild_join": self._on_guild_available,
            "guild_remove": self._on_guild_remove,
            "guild_unavailable": self._on_guild_unavailable,
            "guild_update": self._on_guild_update,
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

    # --- GuildSource --------------------------------------------------------------------------------
    def snapshot(self, server_id: str) -> GuildSnapshot | None:
        guild = self.get_guild(int(server_id))
        if guild is None or guild.unavailable:
            return None
        self.held_presences.apply_guild(guild)  # members chunked since their presence arrived
        include_bots = self.include_bots
        rows = [member_row(m) for m in guild.members if include_bots or not m.bot]
        return GuildSnapshot(guild.name, rows)

    def channels(self, server_id: str) -> list[ChannelRow] | None:
        guild = self.get_guild(int(server_id))
        if guild is None or guild.unavailable:
            return None
        return channel_rows(guild)

    def server_ids(self) -> Iterable[str]:
        return [str(guild.id) for guild in self.guilds if not guild.unavailable]

    def owns(self, server_id: str) -> bool:
        if self.shard_ids is None or self.shard_count is None:
            return True  # every shard is ours
        return shard_of(int(server_id), self.shard_count) in self.shard_ids

    # --- dispatch -------------------------------------------------------------------------------------
    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
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

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """discord.py's own handler errors (coroutine handlers, parsers) go to our log with context."""
        log.exception("discord_handler_failed", handler_event=event_method, context=_context(args))

    # --- handlers: each computes rows and hands them over, nothing else ------------------------------
    def _put(self, member: discord.Member) -> None:
        if member.bot and not self.include_bots:
            return
        self.writer.put(member_row(member))

    def _on_presence_update(self, before: discord.Member, after: discord.Member) -> None:
        # Activities change far more often than status; only status can change our row here
        # (name changes arrive as user_update).
        if before.raw_status != after.raw_status:
            self._put(after)

    def _on_member_join(self, member: discord.Member) -> None:
        self.held_presences.apply_member(member)  # its presence may have come first
        self._put(member)

    def _on_member_update(self, before: discord.Member, after: discord.Member) -> None:
        self._put(after)

    def _on_raw_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        self.held_presences.forget_member(payload.guild_id, payload.user.id)
        self.writer.remove(str(payload.guild_id), str(payload.user.id))

    def _on_user_update(self, before: discord.User, after: discord.User) -> None:
        for guild in after.mutual_guilds:
            member = guild.get_member(after.id)
            if member is not None:
                self._put(member)

    def _on_guild_available(self, guild: discord.Guild) -> None:
        log.info("guild_available", server_id=guild.id, members=guild.member_count, shard=guild.shard_id)
        self.writer.sync_guild(str(guild.id))

    def _on_guild_remove(self, guild: discord.Guild) -> None:
        log.info("guild_removed", server_id=guild.id)
        self.held_presences.forget_guild(guild.id)
        self.writer.depart_guild(str(guild.id))

    def _on_guild_unavailable(self, guild: discord.Guild) -> None:
        log.info("guild_unavailable", server_id=guild.id)  # an outage: GUILD_CREATE follows, then a sync
        self.held_presences.forget_guild(guild.id, superseded=True)

    def _on_guild_update(self, before: discord.Guild, after: discord.Guild) -> None:
        if before.name != after.name:
            self.writer.rename_guild(str(after.id), after.name)

    def _on_guild_role_update(self, before: discord.Role, after: discord.Role) -> None:
        # The colour or the hierarchy changed: every member holding the role may render differently.
        if before.colour != after.colour or before.position != after.position:
            for member in after.members:
                self._put(member)
        # @everyone's permissions are every channel's base: which channels are public may have changed.
        if after.is_default() and before.permissions != after.permissions:
            self.writer.sync_channels(str(after.guild.id))

    def _on_channel_changed(self, channel: discord.abc.GuildChannel) -> None:
        self.writer.sync_channels(str(channel.guild.id))

    def _on_channel_updated(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        self.writer.sync_channels(str(after.guild.id))

    def _on_guild_role_delete(self, role: discord.Role) -> None:
        for member in role.guild.members:  # the role is gone from the cache: re-derive everyone
            self._put(member)

    def _on_message(self, message: discord.Message) -> None:
        if message.guild is None:
            return
        author = message.author
        if author.bot and not self.include_bots:
            return
        channel_id = relay_channel_id(message.channel)
        if channel_id is None:
            return  # a private thread: invite-only, never public
        # The relay rule itself is applied in SQL at the flush (discord_channels), where operators set it.
        self.writer.relay_message(
            str(message.guild.id), str(author.id), str(channel_id), str(message.id), readable_message(message)
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


def _context(args: tuple[Any, ...]) -> dict[str, Any]:
    """Ids of the objects an event carried, for error logs (never their whole repr)."""
    context: dict[str, Any] = {}
    for index, arg in enumerate(args):
        guild = getattr(arg, "guild", None)
        context[f"arg{index}"] = {
            "type": type(arg).__name__,
            "id": getattr(arg, "id", None),
            "guild_id": getattr(guild, "id", getattr(arg, "guild_id", None)),
        }
    return context
