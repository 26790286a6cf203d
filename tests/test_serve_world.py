"""Unit tests of serve/world.py's and serve/view.py's pure rules: visibility, default resolution, the
server-list's keys, presence changes through the (capped) view, the client's world room.

The end-to-end tests (test_serve_protocol.py, test_serve_access.py) drive the same rules through real
sockets and PostgreSQL; these pin each rule down case by case.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from serve.providers import validate_users
from serve.view import View, world_room, world_side
from serve.world import (
    Directory,
    Member,
    ServerInfo,
    database_order,
    visible,
)
from shared.discord_rules import DEFAULT_ROLE_COLOR

KEY = "100"


def member(status: str = "online", username: str = "ann", color: str = "#ff0000") -> Member:
    return Member(username, status, color)


def decoded(frame: bytes | None) -> dict[str, Any] | None:
    return None if frame is None else orjson.loads(frame)


def presence(uid: str, m: Member, *, delete: bool = False, status: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uid": uid,
        "status": status or m.status,
        "username": m.username,
        "roleColor": m.role_color,
    }
    if delete:
        data["delete"] = True
    return {"type": "presence", "server": KEY, "data": data}


# -- visibility ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hide_offline", "shown"),
    [
        ("online", False, True),
        ("offline", False, True),
        ("online", True, True),
        ("idle", True, True),
        ("dnd", True, True),
        ("offline", True, False),
    ],
)
def test_only_offline_members_of_hide_offline_servers_are_hidden(
    status: str, hide_offline: bool, shown: bool
) -> None:
    assert visible(member(status), hide_offline) is shown


# -- the directory: default resolution and order -----------------------------------------------------


def server(
    key: str, *, is_default: bool = False, created_at: float | None = None, **extra: Any
) -> ServerInfo:
    return ServerInfo(key=key, id=extra.pop("id", key), name=f"server {key}", is_default=is_default,
                      created_at=created_at, **extra)  # fmt: skip


def test_the_marked_default_wins_over_the_first_entry() -> None:
    directory = Directory([server("1"), server("2", is_default=True)])
    assert directory.resolve(None) == directory.by_key["2"]


def test_without_a_marked_default_the_first_entry_is_the_default() -> None:
    directory = Directory([server("1"), server("2")])
    assert directory.resolve(None) == directory.by_key["1"]


def test_an_empty_directory_has_no_default() -> None:
    assert Directory([]).resolve(None) is None


def test_a_request_matches_the_id_first_then_the_snowflake() -> None:
    named = server("1", id="lobby")
    clash = server("lobby", id="other")  # its snowflake equals the other server's id: the id wins
    directory = Directory([named, clash, server("2")])
    assert directory.resolve("lobby") == named
    assert directory.resolve("1") == named
    assert directory.resolve("2") == directory.by_key["2"]
    assert directory.resolve("unknown") is None


def test_database_order_is_default_first_then_oldest_then_key_with_undated_last() -> None:
    servers = [
        server("5", created_at=None),
        server("4", created_at=20.0),
        server("3", created_at=10.0),
        server("2", created_at=10.0),
        server("9", created_at=99.0, is_default=True),
    ]
    assert [s.key for s in sorted(servers, key=database_order)] == ["9", "2", "3", "4", "5"]


def test_with_server_replaces_or_removes_one_entry_in_database_order() -> None:
    directory = Directory([server("1", created_at=1.0), server("2", created_at=2.0)])
    renamed = ServerInfo(key="1", id="1", name="renamed", created_at=3.0)
    changed = directory.with_server("1", renamed)
    assert [s.key for s in changed.servers] == ["2", "1"] and changed.by_key["1"].name == "renamed"
    assert [s.key for s in changed.with_server("2", None).servers] == ["1"]
    assert [s.key for s in directory.servers] == ["1", "2"]  # the original is left as it was


def test_the_server_list_names_no_secret() -> None:
    directory = Directory(
        [server("1", passworded=True, oauth_client_id="client-secret-ish", hide_offline=True)]
    )
    listing = orjson.loads(directory.list_frame)
    assert listing == {
        "type": "server-list",
        "data": {"1": {"id": "1", "name": "server 1", "passworded": True, "default": False}},
    }


def test_the_server_list_is_keyed_by_the_links_the_client_writes() -> None:
    """The client holds ``?s=<x>`` for login when ``list[x]`` is passworded, and sends the token only to an
    entry whose ``id`` is ``x`` (docs/protocol.md rule 22)."""
    locked = ServerInfo(key="9", id="staff", name="Staff", passworded=True)
    public = ServerInfo(key="8", id="lobby", name="Lobby")
    data = orjson.loads(Directory([locked, public]).list_frame)["data"]
    assert data["staff"]["id"] == "staff" and data["staff"]["passworded"] is True
    assert data["9"] == {**data["staff"], "id": "9"}  # an old snowflake link is held for login too
    assert set(data) == {"staff", "9", "lobby"}  # a public server is listed once


# -- one member's change, seen through the view (serve/view.py) ----------------------------------------


def view_of(members: dict[str, Member], hide: bool = False, cap: int = 100) -> View:
    view = View(KEY, cap)
    view.settle(members, hide)
    return view


def change(
    view: View, members: dict[str, Member], uid: str, after: Member | None, hide: bool = False
) -> list[dict[str, Any]]:
    """Apply one member's change as serve/core.py does (members first, then the view)."""
    if after is None:
        members.pop(uid, None)
    else:
        members[uid] = after
    return frames_of(view.update(uid, after, members, hide).frames)


def test_a_new_visible_member_gets_a_full_presence() -> None:
    members: dict[str, Member] = {}
    view, after = view_of(members), member()
    assert change(view, members, "7", after) == [presence("7", after)]
    assert list(view.shown) == ["7"]


def test_no_change_in_look_sends_nothing() -> None:
    members = {"7": member()}
    view = view_of(members)
    assert change(view, members, "7", member()) == []  # a different ``touched``, the same look


def test_a_change_of_look_sends_the_new_look() -> None:
    members = {"7": member()}
    view, after = view_of(members), member(color="#00ff00")
    assert change(view, members, "7", after) == [presence("7", after)]


def test_a_member_that_leaves_is_deleted_with_its_last_look() -> None:
    before = member("idle")
    members = {"7": before}
    view = view_of(members)
    assert change(view, members, "7", None) == [presence("7", before, delete=True)]
    assert not view.shown


def test_going_offline_on_a_hide_offline_server_is_a_delete() -> None:
    before = member("online")
    members = {"7": before}
    view = view_of(members, hide=True)
    assert change(view, members, "7", member("offline"), hide=True) == [
        presence("7", before, delete=True, status="offline")
    ]


def test_a_hidden_member_that_stays_hidden_sends_nothing() -> None:
    members = {"7": member("offline")}
    view = view_of(members, hide=True)
    assert change(view, members, "7", member("offline", username="b"), hide=True) == []
    assert change(view, members, "8", member("offline"), hide=True) == []


def test_a_hidden_member_that_leaves_sends_nothing() -> None:
    """The client draws a figure for a delete of a uid it does not know (docs/protocol.md rule 23)."""
    members = {"7": member("offline")}
    view = view_of(members, hide=True)
    assert change(view, members, "7", None, hide=True) == []


def test_coming_online_on_a_hide_offline_server_is_a_full_presence() -> None:
    members = {"7": member("offline")}
    view, after = view_of(members, hide=True), member("online")
    assert change(view, members, "7", after, hide=True) == [presence("7", after)]


# -- a whole world's change (resync, setting change) ---------------------------------------------------


def frames_of(frames: Any) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in frames]


def test_settling_sends_changes_joins_and_leaves_only() -> None:
    same, gone = member(), member(username="gone")
    view = view_of({"1": same, "2": member(), "3": gone})
    changed, new = member("idle"), member(username="new")
    assert frames_of(view.settle({"1": member(), "2": changed, "4": new}, False).frames) == [
        presence("2", changed),
        presence("3", gone, delete=True),
        presence("4", new),
    ]


def test_turning_hide_offline_on_deletes_the_offline_members() -> None:
    offline, online = member("offline"), member("online")
    world = {"1": offline, "2": online}
    view = view_of(world)
    assert frames_of(view.settle(world, True).frames) == [presence("1", offline, delete=True)]


def test_turning_hide_offline_off_shows_the_offline_members() -> None:
    offline, online = member("offline"), member("online")
    world = {"1": offline, "2": online}
    view = view_of(world, hide=True)
    assert frames_of(view.settle(world, False).frames) == [presence("1", offline)]


def test_a_hidden_member_that_leaves_a_hide_offline_server_sends_nothing_in_a_settle() -> None:
    view = view_of({"1": member("offline")}, hide=True)
    assert frames_of(view.settle({}, True).frames) == []


# -- the capped view -----------------------------------------------------------------------------------


def test_the_capped_view_keeps_online_first_then_the_most_recent() -> None:
    members = {
        "old-online": member("online"),
        "offline": member("offline"),
        "dnd": member("dnd"),
        "idle": member("idle"),
        "new-online": member("online"),
    }
    assert list(view_of(members, cap=3).snapshot()) == ["new-online", "old-online", "idle"]
    assert set(view_of(members, cap=10).snapshot()) == set(members)  # under the cap: all


def test_the_snapshot_leaves_out_hidden_members_before_capping() -> None:
    members = {"a": member("offline"), "b": member("dnd")}
    assert view_of(members, hide=True).snapshot() == {
        "b": {"uid": "b", "username": "ann", "status": "dnd", "roleColor": "#ff0000"}
    }


def capped() -> tuple[View, dict[str, Member]]:
    """A view of 2 of 4 online members: "in1", "in2" shown, "out1" (older), "out2" (newer) waiting."""
    members = {uid: member(username=uid) for uid in ("out1", "in1", "in2", "out2")}
    members["in1"], members["in2"] = member(username="in1"), member(username="in2")  # the most recent
    return view_of(members, cap=2), members


def test_a_member_outside_a_capped_view_is_never_mentioned() -> None:
    view, members = capped()
    assert set(view.shown) == {"in1", "in2"}
    assert change(view, members, "out1", member("idle", username="out1")) == []
    assert change(view, members, "out2", None) == []
    assert change(view, members, "new", member(username="new")) == []  # the view is full: it waits
    assert set(view.shown) == {"in1", "in2"}


def test_when_one_leaves_a_capped_view_the_best_waiting_enters() -> None:
    view, members = capped()
    before = members["in1"]
    changes = view.update("in1", None, {k: v for k, v in members.items() if k != "in1"}, False)
    members.pop("in1")
    assert frames_of(changes.frames) == [
        presence("in1", before, delete=True),
        presence("out2", members["out2"]),
    ]
    assert changes.added == 1 and set(view.shown) == {"in2", "out2"}


def test_an_online_member_enters_before_a_more_recent_idle_one() -> None:
    view, members = capped()
    change(view, members, "out2", member("idle", username="out2"))  # more recent, but idle
    assert change(view, members, "in2", member("offline", username="in2"), hide=True)[1] == presence(
        "out1", members["out1"]
    )


def test_a_capped_view_skips_waiting_members_that_changed_or_left() -> None:
    view, members = capped()
    change(view, members, "out2", None)
    change(view, members, "out1", member("offline", username="out1"))
    assert change(view, members, "in1", None, hide=True)[1:] == []  # nobody visible waits
    assert set(view.shown) == {"in2"}


def test_a_settle_keeps_who_is_shown_and_fills_to_the_cap() -> None:
    view, members = capped()
    members.pop("in1")
    out = view.settle(members, False)
    assert set(view.shown) == {"in2", "out2"} and out.added == 1


# -- the client's world (docs/protocol.md rule 23) -------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "side"), [(0, 24), (1, 24), (52, 24), (53, 24), (54, 24), (100, 32), (400, 66), (2000, 148)]
)
def test_the_world_side_follows_the_client(count: int, side: int) -> None:
    assert world_side(count) == side


def test_a_world_has_room_for_newcomers_at_every_size() -> None:
    assert world_room(5) == int(0.3 * 24 * 24) - 5
    assert all(world_room(n) > n for n in range(0, 5000, 7))  # a re-join always makes room


# -- colour: the callbacks' default ---------------------------------------------------------------------


def test_a_callback_member_without_a_usable_colour_gets_the_default_grey() -> None:
    users = validate_users(
        {
            "1": {"username": "none"},
            "2": {"username": "number", "roleColor": 5},
            "3": {"username": "guide", "roleColor": "#99AAB5"},
        },
        KEY,
    )
    assert [users[uid].role_color for uid in ("1", "2", "3")] == [
        DEFAULT_ROLE_COLOR,
        DEFAULT_ROLE_COLOR,
        "#99AAB5",
    ]
