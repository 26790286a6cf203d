"""One server's state without I/O: members, settings, viewers and their grants, and every change to them.

Each change (:meth:`ServerCore.apply`, :meth:`~ServerCore.begin_read`, :meth:`~ServerCore.finish_read`,
:meth:`~ServerCore.set_info`) returns an :class:`Outcome`: the viewers that lose the server, then the frames
for the others. Visibility (hide offline; the members the database's visibility rules hide, which arrive as
``hidden`` deletes and never as rows) and access are decided here only; serve/hub.py does the writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from serve import frames
from serve.view import Changes, View, world_room
from serve.world import Member, ServerInfo
from shared.discord_rules import DEFAULT_ROLE_COLOR
from shared.feed import ChatMessage, FeedEvent, ServerResync, UserDeleted, UserUpserted


@dataclass(frozen=True, slots=True)
class Grant:
    """How a viewer was admitted: ``authenticated`` passed a passworded check, as Discord user ``user_id``
    (None when a registered validate callback decided, so membership is not re-checked)."""

    authenticated: bool = False
    user_id: str | None = None


@dataclass(slots=True)
class Outcome:
    """What one change asks of the shell, in this order: cut ``cuts`` (viewer, reason), then send ``frames``
    to the remaining viewers but ``rejoins``, which get a fresh server-join instead (their world is out of
    room for the figures these frames add); ``resync`` asks for a re-read of the server's members."""

    cuts: list[tuple[Any, str]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    rejoins: list[Any] = field(default_factory=list)
    resync: bool = False


def static_client_id(info: ServerInfo, default: str | None) -> str | None:
    """The OAuth client id viewers of ``info`` are told when no on_get_client_id callback decides."""
    return info.oauth_client_id or default


class ServerCore:
    """One server's live members, settings and viewers. ``buffer`` is not None while a (re)read is in flight.

    ``view`` is what every viewer is shown (capped, the same for all); ``added`` counts the figures the
    frames sent so far created, and ``_limits`` the count each viewer's world has room up to (rule 23).
    """

    __slots__ = (
        "_client_id",
        "_join_key",
        "_join_wire",
        "_limits",
        "_soonest",
        "added",
        "buffer",
        "default_client_id",
        "grants",
        "hidden",
        "info",
        "key",
        "live",
        "members",
        "message_max_chars",
        "view",
        "viewers",
    )

    def __init__(
        self,
        key: str,
        info: ServerInfo | None = None,
        message_max_chars: int = 2000,
        default_client_id: str | None = None,
        max_users: int = 2000,
    ) -> None:
        self.key = key
        self.info = info  # the server's settings now (None: not joinable)
        self.message_max_chars = message_max_chars
        self.default_client_id = default_client_id
        self.members: dict[str, Member] = {}
        # Members the visibility rules leave out: never shown, but members still (a passworded server's
        # access), so a member who opts out of being drawn may go on watching.
        self.hidden: set[str] = set()
        self.viewers: set[Any] = set()
        self.grants: dict[Any, Grant] = {}
        self.live = False
        self.buffer: list[FeedEvent] | None = None
        self.view = View(key, max_users)
        self.added = 0
        self._limits: dict[Any, int] = {}
        self._soonest = 0  # no viewer's limit is below this
        self._join_wire: bytes | None = None
        self._join_key: tuple[ServerInfo, str | None] | None = None
        self._client_id: str | None = None  # of the last snapshot written: a re-join reuses it

    # ------------------------------------------------------------ viewers

    def enter(self, viewer: Any, grant: Grant) -> None:
        """``viewer`` was just written the current snapshot: its world has room from now on for what
        :func:`world_room` says."""
        self.viewers.add(viewer)
        self.grants[viewer] = grant
        limit = self._limits[viewer] = self.added + world_room(len(self.view.shown))
        self._soonest = min(self._soonest, limit) if len(self._limits) > 1 else limit

    def leave(self, viewer: Any) -> None:
        self.viewers.discard(viewer)
        self.grants.pop(viewer, None)
        self._limits.pop(viewer, None)

    def qualifies(self, info: ServerInfo | None, grant: Grant) -> bool:
        """May a viewer admitted with ``grant`` view this server as ``info`` (None: not joinable) says now?"""
        if info is None:
            return False
        if not info.passworded:
            return True
        if not grant.authenticated:
            return False
        return grant.user_id is None or self.member_now(grant.user_id)

    def member_now(self, user_id: str) -> bool:
        """Membership as of the last notification, counting those buffered while the server is re-read."""
        present = user_id in self.members or user_id in self.hidden
        for event in self.buffer or ():
            if isinstance(event, UserUpserted | UserDeleted) and event.user_id == user_id:
                present = isinstance(event, UserUpserted) or event.hidden
        return present

    def _cut_unqualified(self, out: Outcome) -> None:
        for viewer, grant in self.grants.items():
            if not self.qualifies(self.info, grant):
                out.cuts.append((viewer, "server gone" if self.info is None else "not authorised"))

    # ------------------------------------------------------------ changes

    def apply(self, event: FeedEvent) -> Outcome:
        """One notification of this server, in commit order (held while a read is in flight)."""
        out = Outcome()
        if (
            isinstance(event, UserDeleted)
            and not event.hidden
            and self.info is not None
            and self.info.passworded
        ):
            # A member row went away: that user's sockets lose the server now, even while a read is held.
            # (One the rules hide is still a member: it leaves the map, not the server.)
            out.cuts.extend(
                (viewer, "member row deleted")
                for viewer, g in self.grants.items()
                if g.user_id == event.user_id
            )
        if isinstance(event, ServerResync):
            if self.live:
                # Hold later events from now on, not from when the read starts: until the read tells who
                # is still a member, nothing may reach a viewer who is to be cut.
                self.begin_read()
                out.resync = True
            return out
        if self.buffer is not None:
            self.buffer.append(event)
            return out
        self._account(out, self._change(event))
        return out

    @property
    def hide_offline(self) -> bool:
        return self.info.hide_offline if self.info else False

    def _change(self, event: FeedEvent) -> Changes:
        if isinstance(event, UserUpserted):
            after = Member(event.username, event.status, event.role_color)
            self.members[event.user_id] = after
            self.hidden.discard(event.user_id)
            self.invalidate()
            return self.view.update(event.user_id, after, self.members, self.hide_offline)
        if isinstance(event, UserDeleted):
            (self.hidden.add if event.hidden else self.hidden.discard)(event.user_id)
            if self.members.pop(event.user_id, None) is None:
                return Changes()
            self.invalidate()
            return self.view.update(event.user_id, None, self.members, self.hide_offline)
        if isinstance(event, ChatMessage):
            frame = self._chat_frame(event.user_id, event.text, event.channel_id)
            return Changes([frame] if frame is not None else [])
        return Changes()

    def _account(self, out: Outcome, changes: Changes) -> None:
        """Queue ``changes``' frames, and name the viewers whose world has no room for the figures they add:
        those get a fresh server-join instead, which rebuilds their world sized for the view (rule 23)."""
        out.frames.extend(changes.frames)
        if not changes.added:
            return
        self.invalidate()
        self.added += changes.added
        if self.added <= self._soonest or not self._limits:
            return
        room = world_room(len(self.view.shown))
        for viewer, limit in self._limits.items():
            if limit < self.added:
                out.rejoins.append(viewer)
                self._limits[viewer] = self.added + room
        self._soonest = min(self._limits.values())

    def _chat_frame(self, uid: str, text: str, channel: str) -> bytes | None:
        """A message frame only for a relayed server and a member the viewers are shown (rule 12)."""
        info = self.info
        if info is None or not info.relay_messages or uid not in self.view.shown:
            return None
        text = frames.cap_message(text, self.message_max_chars)
        if not text.strip():
            return None
        return frames.message_frame(self.key, uid, text, channel)

    def begin_read(self) -> None:
        """A read of the members starts: this server's events wait for it from now on."""
        if self.buffer is None:
            self.buffer = []

    def finish_read(self, members: dict[str, Member], hidden: Iterable[str] = ()) -> Outcome:
        """Install a fresh read (``hidden``: the ids of the members the rules leave out): replay what
        arrived meanwhile (full rows: idempotent), cut viewers who are no longer members, send the others
        the difference, then the chats held meanwhile."""
        buffered, self.buffer = self.buffer or [], None
        left_out = set(hidden)
        chats = []
        for event in buffered:
            if isinstance(event, UserUpserted):
                members[event.user_id] = Member(event.username, event.status, event.role_color)
                left_out.discard(event.user_id)
            elif isinstance(event, UserDeleted):
                members.pop(event.user_id, None)
                (left_out.add if event.hidden else left_out.discard)(event.user_id)
            elif isinstance(event, ChatMessage):
                chats.append(event)
        self.members, self.hidden = members, left_out
        self.live = True
        self.invalidate()
        out = Outcome()
        self._cut_unqualified(out)  # a bulk change may have removed members
        settled = self.view.settle(members, self.hide_offline)
        if self.viewers:
            self._account(out, settled)
        for chat in chats:
            self._account(out, self._change(chat))
        return out

    def abandon_read(self) -> Outcome:
        """A read failed: apply what was buffered to the old members so nothing is lost."""
        buffered, self.buffer = self.buffer or [], None
        out = Outcome()
        for event in buffered:
            self._account(out, self._change(event))
        return out

    def set_info(self, info: ServerInfo | None) -> Outcome:
        """The server's row changed. Viewers who may no longer view it lose it now (the one place access is
        re-decided); the others get the difference when hide_offline or the client id changed."""
        before, self.info = self.info, info
        out = Outcome()
        if before == info:
            return out
        self.invalidate()
        self._cut_unqualified(out)
        if before is None or info is None or not self.viewers:
            return out
        if before.hide_offline != info.hide_offline:
            self._account(out, self.view.settle(self.members, info.hide_offline))
        new_client_id = static_client_id(info, self.default_client_id)
        if new_client_id and new_client_id != static_client_id(before, self.default_client_id):
            out.frames.append(frames.client_id_frame(self.key, new_client_id))
        return out

    def push_presence(
        self, uid: str, status: str, username: str | None, role_color: str | None, delete: bool
    ) -> Outcome:
        """The guide's broadcast_presence, applied as a change of the member: name/colour filled from the
        cache (d-back fault 13); nothing for an unknown member without a name (never a ghost)."""
        out = Outcome()
        before = self.members.get(uid)
        username = username if username is not None else (before.username if before else None)
        if username is None:
            return out
        color = role_color if role_color is not None else (before.role_color if before else None)
        after = None if delete else Member(username, status, color or DEFAULT_ROLE_COLOR)
        if after is None:
            if self.members.pop(uid, None) is None:
                return out
        else:
            self.members[uid] = after
        self.invalidate()
        self._account(out, self.view.update(uid, after, self.members, self.hide_offline))
        return out

    # ------------------------------------------------------------ the snapshot

    def invalidate(self) -> None:
        self._join_wire = None

    def join_wire(self, info: ServerInfo, client_id: str | None) -> bytes:
        """The server-join of the view as one WebSocket text frame, encoded and framed once, then written as
        is to every joiner until members, settings or the client id change (rule 7)."""
        key = (info, client_id)
        self._client_id = client_id
        if self._join_wire is None or self._join_key != key:
            self._join_wire = frames.text_frame(
                frames.join_frame(info.id, info.name, self.view.snapshot(), client_id)
            )
            self._join_key = key
        return self._join_wire

    def rejoin_wire(self) -> bytes | None:
        """The server-join a viewer out of room is sent (None when the server is gone: it is being cut)."""
        return None if self.info is None else self.join_wire(self.info, self._client_id)
