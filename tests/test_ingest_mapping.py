"""The mapping rules of the guide as plain functions: status, display name, highest coloured role."""

from __future__ import annotations

from ingest.mapping import (
    RoleView,
    clean_text,
    color_hex,
    highest_role_color,
    server_name,
    status_name,
)
from ingest.members import GuildMembers
from shared.discord_rules import DEFAULT_ROLE_COLOR


def test_status_names() -> None:
    assert [status_name(s) for s in ("online", "idle", "dnd", "offline")] == [
        "online",
        "idle",
        "dnd",
        "offline",
    ]
    assert status_name("invisible") == "offline"
    assert status_name("something-new") == "offline"


def test_color_hex_is_lowercase_six_digits() -> None:
    assert color_hex(0xABCDEF) == "#abcdef"
    assert color_hex(0x00000F) == "#00000f"
    assert color_hex(0) == DEFAULT_ROLE_COLOR == "#99aab5"


def test_highest_coloured_role_wins_and_uncoloured_roles_are_skipped() -> None:
    roles = [RoleView(1, 11, 0x111111), RoleView(5, 12, 0), RoleView(3, 13, 0x333333)]
    assert highest_role_color(roles) == "#333333"  # position 5 has no colour
    assert highest_role_color([RoleView(2, 14, 0)]) == DEFAULT_ROLE_COLOR
    assert highest_role_color([]) == DEFAULT_ROLE_COLOR


def test_position_tie_is_broken_like_discord_older_role_higher() -> None:
    roles = [RoleView(4, 200, 0x0000FF), RoleView(4, 100, 0xFF0000)]
    assert highest_role_color(roles) == "#ff0000"


def test_a_member_row_has_the_display_name_cut_and_without_nul() -> None:
    guild = GuildMembers(1, {5: RoleView(1, 5, 0x00FF00)})
    nick = "Nick\x00name" + "x" * 200
    user_id, member, _ = guild.upsert(
        {"user": {"id": "2", "username": "user"}, "nick": nick, "roles": ["5"]}, status_name("dnd")
    )
    row = guild.row(user_id, member)
    assert row.server_id == "1" and row.user_id == "2"
    assert row.username.startswith("Nickname") and len(row.username) == 100
    assert row.status == "dnd" and row.role_color == "#00ff00" and row.role_ids == "5"


def test_clean_text_and_server_name() -> None:
    assert clean_text("a\x00b", 10) == "ab"
    assert server_name("  ", 42) == "42"
    assert server_name("G" * 150, 42) == "G" * 100
