"""Unit tests of serve/world.py's pure rules: visibility, default resolution, presence diffs, the snapshot cap.

The end-to-end tests (test_serve_protocol.py, test_serve_access.py) drive the same rules through real
sockets and PostgreSQL; these pin each rule down case by case.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from serve.providers import validate_users
from serve.world import (
    Directory,
    Member,
    ServerInfo,
    database_order,
    diff_presences,
    presence_for_change,
    snapshot_users,
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


# -- one member's change -----------------------------------------------------------------------------


def test_a_new_visible_member_gets_a_full_presence() -> None:
    after = member()
    assert decoded(presence_for_change(KEY, "7", None, after, False)) == presence("7", after)


def test_no_change_in_look_sends_nothing() -> None:
    before, after = member(), member()  # a different ``touched``, the same look
    assert presence_for_change(KEY, "7", before, after, False) is None


def test_a_change_of_look_sends_the_new_look() -> None:
    before, after = member(), member(color="#00ff00")
    assert decoded(presence_for_change(KEY, "7", before, after, False)) == presence("7", after)


def test_a_member_that_leaves_is_deleted_with_its_last_look() -> None:
    before = member("idle")
    assert decoded(presence_for_change(KEY, "7", before, None, False)) == presence("7", before, delete=True)


def test_going_offline_on_a_hide_offline_server_is_a_delete() -> None:
    before, after = member("online"), member("offline")
    assert decoded(presence_for_change(KEY, "7", before, after, True)) == presence(
        "7", before, delete=True, status="offline"
    )


def test_a_hidden_member_that_stays_hidden_sends_nothing() -> None:
    assert presence_for_change(KEY, "7", member("offline"), member("offline", username="b"), True) is None
    assert presence_for_change(KEY, "7", None, member("offline"), True) is None


def test_a_hidden_member_that_leaves_is_deleted_anyway() -> None:
    before = member("offline")
    assert decoded(presence_for_change(KEY, "7", before, None, True)) == presence("7", before, delete=True)


def test_coming_online_on_a_hide_offline_server_is_a_full_presence() -> None:
    after = member("online")
    assert decoded(presence_for_change(KEY, "7", member("offline"), after, True)) == presence("7", after)


# -- a whole world's change (resync, setting change) ---------------------------------------------------


def frames_of(frames: Any) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in frames]


def test_diff_sends_changes_joins_and_leaves_only() -> None:
    same, changed, gone, new = member(), member("idle"), member(username="gone"), member(username="new")
    old = {"1": same, "2": member(), "3": gone}
    now = {"1": member(), "2": changed, "4": new}
    assert frames_of(diff_presences(KEY, old, now, False, False)) == [
        presence("2", changed),
        presence("4", new),
        presence("3", gone, delete=True),
    ]


def test_turning_hide_offline_on_deletes_the_offline_members() -> None:
    offline, online = member("offline"), member("online")
    world = {"1": offline, "2": online}
    assert frames_of(diff_presences(KEY, world, world, False, True)) == [presence("1", offline, delete=True)]


def test_turning_hide_offline_off_shows_the_offline_members() -> None:
    offline, online = member("offline"), member("online")
    world = {"1": offline, "2": online}
    assert frames_of(diff_presences(KEY, world, world, True, False)) == [presence("1", offline)]


def test_a_hidden_member_that_leaves_a_hide_offline_server_sends_nothing_in_a_diff() -> None:
    assert frames_of(diff_presences(KEY, {"1": member("offline")}, {}, True, True)) == []


# -- the snapshot cap ----------------------------------------------------------------------------------


def test_the_snapshot_cap_keeps_online_first_then_the_most_recent() -> None:
    members = {
        "old-online": member("online"),
        "offline": member("offline"),
        "dnd": member("dnd"),
        "idle": member("idle"),
        "new-online": member("online"),
    }
    assert list(snapshot_users(members, False, 3)) == ["new-online", "old-online", "idle"]
    assert list(snapshot_users(members, False, 10)) == list(members)  # under the cap: all, as stored


def test_the_snapshot_leaves_out_hidden_members_before_capping() -> None:
    members = {"a": member("offline"), "b": member("dnd")}
    assert snapshot_users(members, True, 10) == {
        "b": {"uid": "b", "username": "ann", "status": "dnd", "roleColor": "#ff0000"}
    }


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
