"""Unit tests of serve/core.py, the per-server state without I/O: what each change sends and whom it cuts.

No sockets and no database: viewers are plain strings, and each test reads the :class:`Outcome` a change
returns. test_serve_access.py and test_serve_protocol.py drive the same core through real sockets.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from serve.core import Grant, Outcome, ServerCore
from serve.view import world_room
from serve.world import Member, ServerInfo
from shared.feed import ChatMessage, FeedEvent, ServerResync, UserDeleted, UserUpserted

KEY = "100"
ANN, BOB, CAT = "1", "2", "3"
OPEN = ServerInfo(KEY, "open", "Open")
HIDING = dataclasses.replace(OPEN, hide_offline=True)
PASSWORDED = dataclasses.replace(OPEN, passworded=True)
ANONYMOUS = Grant()
ANN_SIGNED_IN = Grant(authenticated=True, user_id=ANN)
BY_CALLBACK = Grant(authenticated=True, user_id=None)  # a validate callback decided: no membership check


def upsert(uid: str, status: str = "online", username: str | None = None) -> UserUpserted:
    return UserUpserted(1, KEY, uid, username or f"user{uid}", status, "#ff0000")  # type: ignore[arg-type]


def delete(uid: str) -> UserDeleted:
    return UserDeleted(1, KEY, uid)


def hide(uid: str) -> UserDeleted:
    """The visibility rules leave the member out (the feed's delete with ``hidden``)."""
    return UserDeleted(1, KEY, uid, hidden=True)


def chat(uid: str, text: str = "hello") -> ChatMessage:
    return ChatMessage(1, KEY, uid, "c1", "m1", text)


def core(info: ServerInfo | None = OPEN, *members: tuple[str, str], viewers: int = 1) -> ServerCore:
    """A live core with ``members`` (uid, status) and anonymous viewers "v0", "v1", ..."""
    state = ServerCore(KEY, info, message_max_chars=10, default_client_id="default-app")
    state.begin_read()
    state.finish_read({uid: Member(f"user{uid}", status, "#ff0000") for uid, status in members})
    for n in range(viewers):
        state.enter(f"v{n}", ANONYMOUS)
    return state


def sent(out: Outcome) -> list[dict[str, Any]]:
    return [orjson.loads(frame) for frame in out.frames]


def presence(
    uid: str, status: str = "online", *, delete: bool = False, username: str | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uid": uid,
        "status": status,
        "username": username or f"user{uid}",
        "roleColor": "#ff0000",
    }
    if delete:
        data["delete"] = True
    return {"type": "presence", "server": KEY, "data": data}


def test_a_fresh_interpreter_importing_the_sans_io_modules_loads_no_io_library() -> None:
    """`make lint`'s forbidden contract checks the modules' imports; this checks what `import` loads at run
    time, which also runs serve/__init__.py (import-linter does not count a package's __init__)."""
    config = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "forbidden")
    code = "import sys; import {}; print(*sorted({{m.split('.')[0] for m in sys.modules}}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code.format(", ".join(contract["source_modules"]))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert "serve" in loaded and "shared" in loaded
    assert set(loaded) & set(contract["forbidden_modules"]) == set()


# -- apply: upsert ------------------------------------------------------------------------------------


def test_an_upsert_of_a_new_member_sends_it_and_invalidates_the_snapshot() -> None:
    state = core()
    before = state.join_wire(OPEN, None)
    out = state.apply(upsert(ANN))
    assert sent(out) == [presence(ANN)] and out.cuts == [] and not out.resync
    assert ANN in state.members and state.join_wire(OPEN, None) != before


def test_an_upsert_that_changes_nothing_a_viewer_sees_sends_nothing() -> None:
    state = core(OPEN, (ANN, "online"))
    assert sent(state.apply(upsert(ANN))) == []


def test_an_upsert_to_offline_on_a_hiding_server_deletes_the_member_for_viewers() -> None:
    state = core(HIDING, (ANN, "online"))
    assert sent(state.apply(upsert(ANN, "offline"))) == [presence(ANN, "offline", delete=True)]
    assert state.members[ANN].status == "offline"  # kept: it is hidden, not gone
    assert sent(state.apply(upsert(ANN, "offline"))) == []  # hidden before and after
    assert sent(state.apply(upsert(ANN, "idle"))) == [presence(ANN, "idle")]


def test_an_upsert_without_viewers_still_updates_the_members() -> None:
    state = core(viewers=0)
    state.apply(upsert(ANN))
    assert state.members[ANN].username == f"user{ANN}"


# -- apply: delete ------------------------------------------------------------------------------------


def test_a_delete_of_a_member_sends_its_delete() -> None:
    state = core(OPEN, (ANN, "idle"))
    assert sent(state.apply(delete(ANN))) == [presence(ANN, "idle", delete=True)]
    assert ANN not in state.members


def test_a_delete_of_an_unknown_member_sends_nothing() -> None:
    state = core(OPEN, (ANN, "online"))
    before = state.join_wire(OPEN, None)
    assert state.apply(delete(BOB)) == Outcome()
    assert state.join_wire(OPEN, None) is before  # nothing changed: the cached snapshot stays


def test_a_delete_on_a_passworded_server_cuts_that_users_viewers_before_sending() -> None:
    state = core(PASSWORDED, (ANN, "online"), (BOB, "online"), viewers=0)
    state.enter("ann-tab-1", ANN_SIGNED_IN)
    state.enter("ann-tab-2", ANN_SIGNED_IN)
    state.enter("bob", Grant(True, BOB))
    state.enter("callback", BY_CALLBACK)
    out = state.apply(delete(ANN))
    assert sorted(out.cuts) == [("ann-tab-1", "member row deleted"), ("ann-tab-2", "member row deleted")]
    assert sent(out) == [presence(ANN, delete=True)]


def test_a_delete_on_an_open_server_cuts_nobody() -> None:
    state = core(OPEN, (ANN, "online"), viewers=0)
    state.enter("ann", ANN_SIGNED_IN)
    assert state.apply(delete(ANN)).cuts == []


def test_a_member_the_rules_hide_leaves_the_map_but_keeps_its_access() -> None:
    state = core(PASSWORDED, (ANN, "online"), (BOB, "online"), viewers=0)
    state.enter("ann", ANN_SIGNED_IN)
    state.enter("bob", Grant(True, BOB))
    out = state.apply(hide(ANN))
    assert out.cuts == []
    assert sent(out) == [presence(ANN, delete=True)]
    assert ANN not in state.members and state.qualifies(PASSWORDED, ANN_SIGNED_IN)
    assert state.apply(chat(ANN)).frames == []  # nor is its chat relayed
    # A re-read that has it hidden keeps it a member; its row deleted while hidden ends that.
    state.begin_read()
    out = state.finish_read({BOB: Member(f"user{BOB}", "online", "#ff0000")}, hidden=[ANN])
    assert out.cuts == [] and out.frames == []
    out = state.apply(delete(ANN))
    assert out.cuts == [("ann", "member row deleted")] and out.frames == []
    assert not state.qualifies(PASSWORDED, ANN_SIGNED_IN)


def test_a_hidden_member_shown_again_is_sent_whole() -> None:
    state = core(OPEN, (ANN, "online"))
    state.apply(hide(ANN))
    assert sent(state.apply(upsert(ANN, "idle"))) == [presence(ANN, "idle")]
    assert state.hidden == set()


def test_hiding_held_during_a_read_is_replayed_on_top_of_it() -> None:
    state = core(PASSWORDED, (ANN, "online"), viewers=0)
    state.enter("ann", ANN_SIGNED_IN)
    state.begin_read()
    state.apply(hide(ANN))
    assert state.qualifies(PASSWORDED, ANN_SIGNED_IN)
    out = state.finish_read({ANN: Member(f"user{ANN}", "online", "#ff0000")})
    assert out.cuts == [] and ANN not in state.members and state.hidden == {ANN}


# -- apply: chat --------------------------------------------------------------------------------------


def test_a_chat_of_a_visible_member_is_relayed_capped_on_one_line() -> None:
    state = core(OPEN, (ANN, "online"))
    out = state.apply(chat(ANN, "line one\nline two"))
    assert sent(out) == [
        {"type": "message", "server": KEY, "data": {"uid": ANN, "message": "line one l", "channel": "c1"}}
    ]


@pytest.mark.parametrize(
    ("info", "uid", "text"),
    [
        (dataclasses.replace(OPEN, relay_messages=False), ANN, "hi"),  # not a relayed server
        (OPEN, BOB, "hi"),  # not a member
        (HIDING, CAT, "hi"),  # a member the viewers cannot see
        (OPEN, ANN, " \n "),  # nothing left to show
        (None, ANN, "hi"),  # the server is gone
    ],
)
def test_a_chat_is_dropped(info: ServerInfo | None, uid: str, text: str) -> None:
    state = core(info, (ANN, "online"), (CAT, "offline"))
    assert state.apply(chat(uid, text)) == Outcome()


def test_a_chat_does_not_change_the_members() -> None:
    state = core(OPEN, (ANN, "online"))
    before = state.join_wire(OPEN, None)
    state.apply(chat(ANN))
    assert state.join_wire(OPEN, None) is before


# -- reads: buffering, replay, resync diff ------------------------------------------------------------


def test_events_during_a_read_are_held_and_replayed_on_top_of_it() -> None:
    state = core(OPEN, (ANN, "online"), (BOB, "online"))
    state.begin_read()
    held: list[FeedEvent] = [upsert(CAT, "idle"), delete(BOB), chat(CAT, "hi"), upsert(ANN, "dnd")]
    for event in held:
        assert state.apply(event) == Outcome()  # nothing is sent while the read is in flight
    # The read saw an older world: Bob still there, Ann online, no Cat.
    out = state.finish_read(
        {ANN: Member(f"user{ANN}", "online", "#ff0000"), BOB: Member(f"user{BOB}", "online", "#ff0000")}
    )
    assert set(state.members) == {ANN, CAT} and state.members[ANN].status == "dnd"
    assert state.buffer is None and state.live
    frames = sent(out)
    # The difference from what viewers had, then the chat held meanwhile (after its author exists).
    assert sorted(frames[:-1], key=str) == sorted(
        [presence(ANN, "dnd"), presence(CAT, "idle"), presence(BOB, delete=True)], key=str
    )
    assert frames[-1]["type"] == "message" and frames[-1]["data"]["uid"] == CAT


def test_a_resync_diff_sends_only_what_changed() -> None:
    state = core(HIDING, (ANN, "online"), (BOB, "online"), (CAT, "offline"))
    state.begin_read()
    out = state.finish_read(
        {
            ANN: Member(f"user{ANN}", "online", "#ff0000"),  # unchanged
            BOB: Member(f"user{BOB}", "offline", "#ff0000"),  # now hidden
            CAT: Member("renamed", "offline", "#ff0000"),  # hidden before and after
        }
    )
    assert sent(out) == [presence(BOB, "offline", delete=True)]


def test_a_read_without_viewers_sends_nothing() -> None:
    state = core(OPEN, (ANN, "online"), viewers=0)
    state.begin_read()
    assert state.finish_read({}).frames == []


def test_a_resync_notification_holds_events_and_asks_for_a_read() -> None:
    state = core(OPEN, (ANN, "online"))
    out = state.apply(ServerResync(1, KEY))
    assert out.resync and out.frames == [] and state.buffer == []
    assert state.apply(upsert(BOB)) == Outcome()
    assert state.buffer == [upsert(BOB)]
    assert state.apply(ServerResync(1, KEY)).resync  # a second one keeps what is held
    assert state.buffer == [upsert(BOB)]


def test_a_resync_notification_before_the_first_read_asks_for_nothing() -> None:
    state = ServerCore(KEY, OPEN)
    assert state.apply(ServerResync(1, KEY)) == Outcome() and state.buffer is None


def test_a_failed_read_applies_what_was_held_to_the_old_members() -> None:
    state = core(OPEN, (ANN, "online"))
    state.begin_read()
    state.apply(upsert(BOB))
    state.apply(delete(ANN))
    out = state.abandon_read()
    assert sent(out) == [presence(BOB), presence(ANN, delete=True)]
    assert set(state.members) == {BOB} and state.buffer is None


def test_a_read_cuts_signed_in_viewers_who_are_no_longer_members() -> None:
    state = core(PASSWORDED, (ANN, "online"), (BOB, "online"), viewers=0)
    state.enter("ann", ANN_SIGNED_IN)
    state.enter("bob", Grant(True, BOB))
    state.begin_read()
    out = state.finish_read({BOB: Member(f"user{BOB}", "online", "#ff0000")})
    assert out.cuts == [("ann", "not authorised")]


def test_membership_counts_events_held_during_a_read() -> None:
    state = core(PASSWORDED, (BOB, "online"), viewers=0)
    state.begin_read()
    state.apply(upsert(ANN))
    assert state.qualifies(PASSWORDED, ANN_SIGNED_IN)
    state.apply(delete(ANN))
    assert not state.qualifies(PASSWORDED, ANN_SIGNED_IN)


# -- settings: set_info -------------------------------------------------------------------------------


def test_switching_hide_offline_on_deletes_offline_members_and_off_sends_them() -> None:
    state = core(OPEN, (ANN, "online"), (BOB, "offline"))
    assert sent(state.set_info(HIDING)) == [presence(BOB, "offline", delete=True)]
    assert sent(state.set_info(OPEN)) == [presence(BOB, "offline")]
    assert state.info == OPEN


def test_the_same_info_again_changes_nothing() -> None:
    state = core(OPEN, (ANN, "online"))
    before = state.join_wire(OPEN, None)
    assert state.set_info(OPEN) == Outcome()
    assert state.join_wire(OPEN, None) is before


def test_a_new_client_id_is_sent_and_the_default_one_is_not_resent() -> None:
    state = core(OPEN, (ANN, "online"))
    own = dataclasses.replace(OPEN, oauth_client_id="own-app")
    assert sent(state.set_info(own)) == [
        {"type": "update-clientid", "server": KEY, "data": {"clientId": "own-app"}}
    ]
    renamed = dataclasses.replace(own, name="Renamed")
    assert state.set_info(renamed) == Outcome()  # same client id: nothing to tell


def test_a_server_that_becomes_passworded_cuts_anonymous_viewers_only() -> None:
    state = core(OPEN, (ANN, "online"), viewers=0)
    state.enter("anonymous", ANONYMOUS)
    state.enter("ann", ANN_SIGNED_IN)
    state.enter("callback", BY_CALLBACK)
    out = state.set_info(PASSWORDED)
    assert out.cuts == [("anonymous", "not authorised")] and out.frames == []


def test_a_passworded_server_cuts_signed_in_viewers_who_are_not_members() -> None:
    state = core(OPEN, (BOB, "online"), viewers=0)
    state.enter("ann", ANN_SIGNED_IN)
    state.enter("bob", Grant(True, BOB))
    assert state.set_info(PASSWORDED).cuts == [("ann", "not authorised")]


def test_a_server_that_is_disabled_or_departed_cuts_every_viewer() -> None:
    state = core(OPEN, (ANN, "online"), viewers=0)
    state.enter("anonymous", ANONYMOUS)
    state.enter("ann", ANN_SIGNED_IN)
    out = state.set_info(None)
    assert out.cuts == [("anonymous", "server gone"), ("ann", "server gone")] and out.frames == []


def test_cuts_come_with_the_frames_for_the_viewers_left() -> None:
    """A row that both hides offline members and becomes passworded: the shell cuts first, then sends."""
    state = core(OPEN, (ANN, "online"), (BOB, "offline"), viewers=0)
    state.enter("anonymous", ANONYMOUS)
    state.enter("ann", ANN_SIGNED_IN)
    out = state.set_info(dataclasses.replace(PASSWORDED, hide_offline=True))
    assert out.cuts == [("anonymous", "not authorised")]
    assert sent(out) == [presence(BOB, "offline", delete=True)]


def test_a_viewer_that_left_is_not_cut() -> None:
    state = core(OPEN, viewers=0)
    state.enter("gone", ANONYMOUS)
    state.leave("gone")
    assert state.set_info(None).cuts == [] and not state.viewers


# -- the guide's broadcast_presence -------------------------------------------------------------------


def test_a_pushed_presence_fills_name_and_colour_from_the_cache() -> None:
    state = core(OPEN, (ANN, "online"))
    assert sent(state.push_presence(ANN, "idle", None, None, delete=False)) == [presence(ANN, "idle")]
    assert state.members[ANN].status == "idle"


def test_a_pushed_presence_of_an_unknown_member_without_a_name_is_dropped() -> None:
    state = core(OPEN)
    assert sent(state.push_presence(BOB, "online", None, None, delete=False)) == [] and not state.members


def test_a_pushed_delete_removes_the_member() -> None:
    state = core(OPEN, (ANN, "online"))
    frames = sent(state.push_presence(ANN, "offline", None, None, delete=True))
    assert [f["data"]["delete"] for f in frames] == [True] and ANN not in state.members


def test_a_pushed_delete_of_a_member_nobody_is_shown_sends_nothing() -> None:
    state = core(HIDING, (ANN, "offline"))
    assert sent(state.push_presence(ANN, "offline", None, None, delete=True)) == []
    assert sent(state.push_presence(BOB, "offline", "bob", None, delete=True)) == []


# -- what the viewers may be told (docs/protocol.md rule 23) ---------------------------------------------


def test_a_member_offline_on_a_hide_offline_server_leaves_without_a_frame() -> None:
    state = core(HIDING, (ANN, "offline"), (BOB, "online"))
    assert sent(state.apply(delete(ANN))) == [] and ANN not in state.members
    assert sent(state.apply(hide(BOB))) == [presence(BOB, "online", delete=True)]
    assert sent(state.apply(delete(BOB))) == []  # hidden by a rule before: nothing more


def test_a_capped_server_tells_nothing_of_members_outside_its_view() -> None:
    state = ServerCore(KEY, OPEN, max_users=2)
    state.begin_read()
    state.finish_read({uid: Member(f"user{uid}", "online", "#ff0000") for uid in (ANN, BOB, CAT)})
    state.enter("v0", ANONYMOUS)
    outside = ({ANN, BOB, CAT} - set(state.view.shown)).pop()
    assert sent(state.apply(upsert(outside, "idle"))) == []
    assert sent(state.apply(chat(outside))) == []
    assert sent(state.apply(delete(outside))) == []
    assert len(orjson.loads(state.join_wire(OPEN, None)[4:])["data"]["users"]) == 2


def test_a_viewer_out_of_room_gets_a_fresh_join_instead_of_the_frame() -> None:
    state = core(HIDING, *((str(n), "online") for n in range(5)))
    room = world_room(5)
    newcomers = iter(range(1000, 10_000))
    for _ in range(room):
        assert state.apply(upsert(str(next(newcomers)))).rejoins == []
    late = "late"
    state.enter(late, ANONYMOUS)  # joined with more members: more room, its own count
    out = state.apply(upsert(str(next(newcomers))))
    assert out.rejoins == ["v0"] and len(out.frames) == 1
    for _ in range(world_room(5 + room + 1) - 1):  # v0's new world holds these; late's holds more
        assert state.apply(upsert(str(next(newcomers)))).rejoins == []


def test_deletes_take_no_room() -> None:
    state = core(OPEN, *((str(n), "online") for n in range(5)))
    for n in range(world_room(5) * 2):
        assert state.apply(delete(str(n % 5) if n < 5 else str(n))).rejoins == []
