"""The view of one server: which members its viewers are shown, how that set evolves, and how much room
the d-zone client's world has for newcomers. Pure data, no I/O; serve/core.py keeps one per server.

The rule the client forces on us (docs/protocol.md, "What the client can hold"): every presence for a uid
the client does not draw creates a figure, even a delete, and each figure takes a cell the world never gives
back. So a viewer is sent frames about the members in its view only, and only as many newcomers as its
world has cells; a capped view is one per server, so every viewer of it agrees.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from serve import frames
from serve.world import STATUS_RANK, Member, user_entry, visible

# Share of a world's size x size square the client's terrain is sure to give as free cells (its main
# island, less the beacon's). Measured on the client's generator (docs/protocol.md): the smallest of 300
# worlds was 0.375 of the square at 24 cells a side, 0.455 at 46, 0.495 at 148; 0.3 keeps a margin.
SURE_CELL_SHARE = 0.3
MIN_WORLD_SIDE = 24


def world_side(snapshot_count: int) -> int:
    """Cells a side of the world the client builds for a server-join with ``snapshot_count`` entries:
    ``Math.round(3.3 * sqrt(n))`` (src/main.ts:550), made even and at least 24 (src/script/environment/world.ts:82)."""
    rounded = math.floor(3.3 * math.sqrt(snapshot_count) + 0.5)  # Math.round: halves go up
    return max(MIN_WORLD_SIDE, rounded // 2 * 2)


def world_cells(snapshot_count: int) -> int:
    """Cells the client's world surely has for figures (a lower bound; the terrain is random)."""
    return int(SURE_CELL_SHARE * world_side(snapshot_count) ** 2)


def world_room(snapshot_count: int) -> int:
    """Figures a viewer can still be given after a server-join of ``snapshot_count`` members (all drawn)."""
    return world_cells(snapshot_count) - snapshot_count


@dataclass(slots=True)
class Changes:
    """What one change of the view sends every viewer, and how many of those frames create a figure."""

    frames: list[bytes] = field(default_factory=list)
    added: int = 0


class View:
    """The members shown (uid -> the look as drawn), at most ``cap``. A member outside the view is never
    mentioned; when one inside leaves, the best one waiting enters (online first, then the most recently
    changed), so the view stays full while members wait and equals the snapshot a joiner gets."""

    __slots__ = ("_waiting", "cap", "key", "shown")

    def __init__(self, key: str, cap: int) -> None:
        self.key = key
        self.cap = cap
        self.shown: dict[str, Member] = {}
        # Candidates outside the view: (rank, -touched, uid); an entry is stale once the member changed.
        self._waiting: list[tuple[int, int, str]] = []

    def snapshot(self) -> dict[str, dict[str, str]]:
        return {uid: user_entry(uid, look) for uid, look in self.shown.items()}

    def update(self, uid: str, after: Member | None, members: Mapping[str, Member], hide: bool) -> Changes:
        """Member ``uid`` became ``after`` (None: gone); ``members`` is already the new state."""
        out = Changes()
        now = after is not None and visible(after, hide)
        drawn = self.shown.get(uid)
        if drawn is not None:
            if now:
                assert after is not None
                self.shown[uid] = after
                if not drawn.same_look(after):
                    out.frames.append(self._presence(uid, after))
                return out
            del self.shown[uid]
            status = "offline" if after is not None else drawn.status
            out.frames.append(
                frames.presence_frame(self.key, uid, status, drawn.username, drawn.role_color, delete=True)
            )
            self._fill(members, hide, out)
            return out
        if now:
            assert after is not None
            if len(self.shown) < self.cap:
                self._admit(uid, after, out)
            else:
                self._wait(uid, after, members)
        return out

    def settle(self, members: Mapping[str, Member], hide: bool) -> Changes:
        """Re-decide the view on a new read of the members or a new hide_offline: those shown who are
        still visible stay, the best waiting fill the rest; the frames take a viewer from old to new."""
        out = Changes()
        for uid, drawn in list(self.shown.items()):
            after = members.get(uid)
            if after is None or not visible(after, hide):
                del self.shown[uid]
                status = "offline" if after is not None else drawn.status
                out.frames.append(
                    frames.presence_frame(
                        self.key, uid, status, drawn.username, drawn.role_color, delete=True
                    )
                )
            elif not drawn.same_look(after):
                self.shown[uid] = after
                out.frames.append(self._presence(uid, after))
            else:
                self.shown[uid] = after
        self._waiting = [
            _rank(uid, m) for uid, m in members.items() if uid not in self.shown and visible(m, hide)
        ]
        heapq.heapify(self._waiting)
        self._fill(members, hide, out)
        return out

    # ------------------------------------------------------------ inside

    def _presence(self, uid: str, look: Member) -> bytes:
        return frames.presence_frame(self.key, uid, look.status, look.username, look.role_color)

    def _admit(self, uid: str, look: Member, out: Changes) -> None:
        self.shown[uid] = look
        out.frames.append(self._presence(uid, look))
        out.added += 1

    def _wait(self, uid: str, look: Member, members: Mapping[str, Member]) -> None:
        if len(self._waiting) > 2 * len(members) + 64:  # mostly stale entries: start again from the members
            self._waiting = [_rank(u, m) for u, m in members.items() if u not in self.shown]
            heapq.heapify(self._waiting)
        heapq.heappush(self._waiting, _rank(uid, look))

    def _fill(self, members: Mapping[str, Member], hide: bool, out: Changes) -> None:
        while len(self.shown) < self.cap and self._waiting:
            _, minus_touched, uid = heapq.heappop(self._waiting)
            member = members.get(uid)
            if (
                member is None
                or member.touched != -minus_touched
                or uid in self.shown
                or not visible(member, hide)
            ):
                continue  # stale: the member changed, left, or entered since
            self._admit(uid, member, out)


def _rank(uid: str, member: Member) -> tuple[int, int, str]:
    return (STATUS_RANK.get(member.status, 0), -member.touched, uid)
