"""What the writer has not committed yet: coalesced per (server, user), taken in batches, put back on failure.

Pure bookkeeping, no I/O (unit-tested without a database, tests/test_ingest_pending.py). The latest state
of a member wins, so the rows waiting are bounded by the number of members, never by the event rate.
Guild-level work (full sync, rename, departure) supersedes older rows of its guild; work put back after a
failed write never replaces anything newer that arrived meanwhile.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from ingest.channels import ChannelRow
from ingest.mapping import MemberRow, clean_text, server_name
from shared.feed import MESSAGE_MAX_CHARS

__all__ = ["Batch", "ChannelRow", "ChatLine", "Entry", "GuildOp", "GuildOpKind", "PendingWork", "Taken"]


class ChatLine(NamedTuple):
    """A chat message to announce (never stored)."""

    server_id: str
    user_id: str
    channel_id: str
    message_id: str
    text: str


GuildOpKind = Literal["sync", "depart", "rename"]


class GuildOp(NamedTuple):
    """Work on a whole guild; ``name`` is only used by a rename."""

    kind: GuildOpKind
    name: str = ""


Entry = tuple[MemberRow | None, float]  # None: delete the row; float: monotonic enqueue time
Batch = list[tuple[str, dict[str, Entry]]]  # per server, user id -> entry


@dataclass
class Taken:
    """One flush's work, in the order it is written: reconcile, guild ops, roles, channels, rows, chat."""

    reconcile: set[str] | None
    ops: dict[str, GuildOp]
    role_syncs: set[str]
    channel_syncs: set[str]
    batch: Batch
    messages: list[ChatLine]
    done_ops: set[str] = field(default_factory=set)  # ops written so far (not put back on failure)
    failed: bool = False  # a guild op failed: concurrent syncs stop taking more


class PendingWork:
    """Everything handed to the writer and not yet committed."""

    def __init__(self, batch_max_rows: int, message_queue_max: int) -> None:
        self.batch_max_rows = batch_max_rows
        self.message_queue_max = message_queue_max
        self.rows: dict[str, dict[str, Entry]] = {}
        self.row_count = 0
        self.ops: dict[str, GuildOp] = {}
        self.reconcile: set[str] | None = None
        self.role_syncs: set[str] = set()  # guilds whose roles are re-read (a full sync writes them too)
        self.channel_syncs: set[str] = set()
        self.messages: deque[ChatLine] = deque()
        self.messages_dropped = 0

    # --- handing over --------------------------------------------------------------------------------
    def put(self, row: MemberRow, now: float) -> bool:
        """Make ``row`` the pending state of its (server, user); True when a full batch is waiting."""
        guild = self.rows.get(row[0])
        if guild is None:
            guild = self.rows[row[0]] = {}
        if row[1] not in guild:
            self.row_count += 1
        guild[row[1]] = (row, now)
        return self.row_count >= self.batch_max_rows

    def remove(self, server_id: str, user_id: str, now: float) -> None:
        """The member left: delete its row (unless it comes back before the next flush)."""
        guild = self.rows.get(server_id)
        if guild is None:
            guild = self.rows[server_id] = {}
        if user_id not in guild:
            self.row_count += 1
        guild[user_id] = (None, now)

    def sync_guild(self, server_id: str) -> None:
        self.ops[server_id] = GuildOp("sync")
        self.channel_syncs.add(server_id)

    def depart_guild(self, server_id: str) -> None:
        self.ops[server_id] = GuildOp("depart")
        self.role_syncs.discard(server_id)
        self.channel_syncs.discard(server_id)
        self.drop_rows(server_id)  # older than the departure

    def rename_guild(self, server_id: str, name: str) -> None:
        current = self.ops.get(server_id)
        if current is not None and current.kind in ("sync", "depart"):
            return  # the sync reads the current name; a departed guild keeps its last name
        self.ops[server_id] = GuildOp("rename", server_name(name, server_id))

    def relay(self, line: ChatLine) -> bool:
        """Queue a chat line (text cleaned); False when the oldest one was dropped for the bound."""
        dropped = len(self.messages) >= self.message_queue_max
        if dropped:
            self.messages.popleft()
            self.messages_dropped += 1
        self.messages.append(line._replace(text=clean_text(line.text, MESSAGE_MAX_CHARS)))
        return not dropped

    def drop_rows(self, server_id: str) -> None:
        """Forget the guild's pending rows (something newer about the whole guild supersedes them)."""
        dropped = self.rows.pop(server_id, None)
        if dropped:
            self.row_count -= len(dropped)

    def idle(self) -> bool:
        return not (
            self.row_count
            or self.ops
            or self.role_syncs
            or self.channel_syncs
            or self.messages
            or self.reconcile is not None
        )

    # --- taking and putting back ---------------------------------------------------------------------
    def take(self) -> Taken:
        """Everything due for one flush (rows and chat up to ``batch_max_rows`` each)."""
        ops, self.ops = self.ops, {}
        for server_id, op in ops.items():
            if op.kind == "sync":
                self.drop_rows(server_id)  # the snapshot, read at the flush, is newer
        reconcile, self.reconcile = self.reconcile, None
        role_syncs, self.role_syncs = self.role_syncs, set()
        channel_syncs, self.channel_syncs = self.channel_syncs, set()
        count = min(len(self.messages), self.batch_max_rows)
        messages = [self.messages.popleft() for _ in range(count)]
        return Taken(reconcile, ops, role_syncs, channel_syncs, self._take_batch(), messages)

    def _take_batch(self) -> Batch:
        budget = self.batch_max_rows
        taken: Batch = []
        for server_id in list(self.rows):
            guild = self.rows[server_id]
            if len(guild) <= budget:
                del self.rows[server_id]
                part = guild
            else:
                part = {user_id: guild.pop(user_id) for user_id in list(itertools.islice(guild, budget))}
            taken.append((server_id, part))
            budget -= len(part)
            self.row_count -= len(part)
            if budget <= 0:
                break
        return taken

    def restore(self, taken: Taken) -> None:
        """Put back what ``taken`` still holds (the flush clears what it wrote), never over anything newer."""
        for server_id, op in taken.ops.items():
            if server_id not in taken.done_ops and server_id not in self.ops:
                self.ops[server_id] = op
        self.role_syncs |= taken.role_syncs
        self.channel_syncs |= taken.channel_syncs
        for server_id, part in taken.batch:
            guild = self.rows.get(server_id)
            if guild is None:
                guild = self.rows[server_id] = {}
            for user_id, entry in part.items():
                if user_id not in guild:
                    guild[user_id] = entry
                    self.row_count += 1
        self.messages.extendleft(reversed(taken.messages))
        while len(self.messages) > self.message_queue_max:
            self.messages.popleft()
            self.messages_dropped += 1
        if taken.reconcile is not None and self.reconcile is None:
            self.reconcile = taken.reconcile
