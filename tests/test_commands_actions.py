"""The /dzone actions as plain functions on a real PostgreSQL, without discord.py or a gateway."""

from __future__ import annotations

import asyncpg
import pytest

from ingest import actions
from ingest.actions import Actor, CommandRefused
from tests.test_serve_support import add_server, add_users

SERVER = "111"
ADMIN = Actor(SERVER, "7", "ana")


async def _town(conn: asyncpg.Connection) -> None:
    await add_server(conn, SERVER, "Café")
    await add_server(conn, "222", "Other", alias="taken")
    await add_users(conn, SERVER, {"7": ("ana", "online", "#99aab5"), "8": ("bo", "offline", "#99aab5")})


async def test_a_server_the_ingest_has_not_written_is_refused(conn: asyncpg.Connection) -> None:
    for action in (
        actions.hide_me(conn, Actor("999", "7", "ana"), "/dzone hide-me"),
        actions.link(conn, "999", "https://t.example/"),
        actions.status(conn, "999", viewers_window_s=30, relaying=True),
    ):
        with pytest.raises(CommandRefused, match="not in the town yet"):
            await action
    await add_server(conn, "999", "Gone")
    await conn.execute("UPDATE discord_servers SET departed_at = now() WHERE server_id = '999'")
    with pytest.raises(CommandRefused, match="not in the town yet"):
        await actions.link(conn, "999", "https://t.example/")


async def test_link_of_a_disabled_town_is_refused(conn: asyncpg.Connection) -> None:
    await _town(conn)
    assert (
        await actions.link(conn, SERVER, "https://t.example")
        == "The town of **Café**: https://t.example/?s=111"
    )
    await conn.execute("UPDATE discord_servers SET enabled = FALSE WHERE server_id = $1", SERVER)
    with pytest.raises(CommandRefused, match="switched off"):
        await actions.link(conn, SERVER, "https://t.example")


async def test_settings_refusals_change_nothing_and_audit_nothing(conn: asyncpg.Connection) -> None:
    await _town(conn)
    for alias, refusal in (
        ("taken", "taken by another server"),
        ("12", "cannot be an alias"),
        ("a b", "cannot"),
    ):
        with pytest.raises(CommandRefused, match=refusal):
            await actions.change_settings(
                conn, ADMIN, "/dzone settings", {"hide_offline": False, "alias": alias}
            )
    row = await conn.fetchrow("SELECT hide_offline, alias FROM discord_servers WHERE server_id = $1", SERVER)
    assert (row["hide_offline"], row["alias"]) == (True, None)
    assert await conn.fetchval("SELECT count(*) FROM command_audit") == 0
    answer = await actions.change_settings(conn, ADMIN, "/dzone settings", {"hide_offline": None})
    assert answer.startswith("Nothing changed. Settings: hide_offline: on, relay_chat: on")


async def test_hide_me_of_a_member_without_a_row_yet_counts_once_their_row_arrives(
    conn: asyncpg.Connection,
) -> None:
    await _town(conn)
    await actions.hide_me(conn, Actor(SERVER, "9", "new"), "/dzone hide-me")
    await add_users(conn, SERVER, {"9": ("new", "online", "#99aab5")})
    assert await conn.fetchval("SELECT hidden FROM discord_users WHERE user_id = '9'")
    assert "not hidden" in await actions.show_me(conn, Actor(SERVER, "8", "bo"), "/dzone show-me")
    text = await actions.status(conn, SERVER, viewers_window_s=30, relaying=False)
    assert "Members: 3; shown now: 1 (offline members hidden); hidden by rules: 1 (1 of them" in text
    assert "Viewers now: 0 (no serve reporting)" in text and "Chat: not relayed" in text
