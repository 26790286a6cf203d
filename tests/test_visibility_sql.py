"""The visibility rules in SQL alone: discord_visibility and discord_roles -> discord_users.hidden -> the feed.

Each rule hides and shows members at its commit; the feed announces a member leaving the town as a
delete and one entering as an upsert, and a hidden member's changes announce nothing.
"""

from __future__ import annotations

import random

import asyncpg
import pytest

from ingest import store
from ingest.mapping import MemberRow
from shared import feed
from tests import test_feed
from tests.test_feed import Listener

SERVER = "100"
ROLE_OPT_OUT, ROLE_MOD, ROLE_FAN = "501", "502", "503"
listener = test_feed.listener  # the fixture: a LISTEN connection on the feed


@pytest.fixture
async def members(conn: asyncpg.Connection, listener: Listener) -> None:
    """Three members: 1 has no role, 2 is a moderator, 3 a fan and a moderator."""
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ($1, 'Guild')", SERVER)
    await conn.executemany(
        "INSERT INTO discord_roles (server_id, role_id, name) VALUES ($1, $2, $3)",
        [
            (SERVER, ROLE_OPT_OUT, "hide me from d-zone"),
            (SERVER, ROLE_MOD, "mods"),
            (SERVER, ROLE_FAN, "fans"),
        ],
    )
    await conn.executemany(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color, role_ids)"
        " VALUES ($1, $2, $1, 'online', '#000000', $3)",
        [("1", SERVER, []), ("2", SERVER, [ROLE_MOD]), ("3", SERVER, [ROLE_FAN, ROLE_MOD])],
    )
    await listener.drain(conn)


async def hidden(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT user_id FROM discord_users WHERE server_id = $1 AND hidden", SERVER)
    return {row["user_id"] for row in rows}


def summary(events: list[feed.FeedEvent]) -> list[tuple[str, str]]:
    """The member events as (op, user id), "hide" for a delete of a member the rules leave out; any
    other kind of event fails the test."""
    ops = []
    for e in events:
        if isinstance(e, feed.UserUpserted):
            ops.append(("upsert", e.user_id))
        elif isinstance(e, feed.UserDeleted):
            ops.append(("hide" if e.hidden else "delete", e.user_id))
        else:
            raise AssertionError(f"not a member event: {e}")
    return ops


async def rule(conn: asyncpg.Connection, kind: str, value: str) -> None:
    await conn.execute("INSERT INTO discord_visibility VALUES ($1, $2, $3)", SERVER, kind, value)


async def unrule(conn: asyncpg.Connection, kind: str, value: str) -> None:
    await conn.execute(
        "DELETE FROM discord_visibility WHERE server_id = $1 AND rule = $2 AND value = $3",
        SERVER,
        kind,
        value,
    )


@pytest.mark.usefixtures("members")
async def test_hide_user_deletes_then_upserts_the_member(
    conn: asyncpg.Connection, listener: Listener
) -> None:
    await rule(conn, "hide_user", "2")
    assert await hidden(conn) == {"2"}
    assert summary(await listener.drain(conn)) == [("hide", "2")]

    # A hidden member's changes announce nothing; its leaving and coming back only its id.
    await conn.execute("UPDATE discord_users SET status = 'idle', username = 'x' WHERE user_id = '2'")
    assert await listener.drain(conn) == []
    await conn.execute("DELETE FROM discord_users WHERE user_id = '2'")
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color) "
        "VALUES ('2', $1, 'back', 'dnd', '#000000')",
        SERVER,
    )
    assert summary(await listener.drain(conn)) == [("delete", "2"), ("hide", "2")]
    # Writing ``hidden`` against the rules does not stick.
    await conn.execute("UPDATE discord_users SET hidden = FALSE WHERE user_id = '2'")
    assert await hidden(conn) == {"2"}

    await unrule(conn, "hide_user", "2")
    [shown] = await listener.drain(conn)
    assert isinstance(shown, feed.UserUpserted)
    assert (shown.user_id, shown.username, shown.status) == ("2", "back", "dnd")


@pytest.mark.usefixtures("members")
@pytest.mark.parametrize("kind", ["exclude_role", "opt_out_role"])
@pytest.mark.parametrize("value", [ROLE_MOD, "mods"])  # by id or by name
async def test_a_role_rule_hides_its_holders(
    conn: asyncpg.Connection,
    listener: Listener,
    kind: str,
    value: str,
) -> None:
    await rule(conn, kind, value)
    assert await hidden(conn) == {"2", "3"}
    assert sorted(summary(await listener.drain(conn))) == [("hide", "2"), ("hide", "3")]
    await unrule(conn, kind, value)
    assert await hidden(conn) == set()
    assert sorted(summary(await listener.drain(conn))) == [("upsert", "2"), ("upsert", "3")]


@pytest.mark.usefixtures("members")
async def test_include_roles_show_only_their_holders(conn: asyncpg.Connection, listener: Listener) -> None:
    await rule(conn, "include_role", "fans")
    assert await hidden(conn) == {"1", "2"}
    await rule(conn, "include_role", ROLE_MOD)
    assert await hidden(conn) == {"1"}
    assert summary(await listener.drain(conn)) == [("hide", "1"), ("hide", "2"), ("upsert", "2")]
    # An exclusion wins over an inclusion.
    await rule(conn, "exclude_role", "fans")
    assert await hidden(conn) == {"1", "3"}


@pytest.mark.usefixtures("members")
async def test_gaining_and_losing_the_opt_out_role(conn: asyncpg.Connection, listener: Listener) -> None:
    await rule(conn, "opt_out_role", "hide me from d-zone")
    assert await listener.drain(conn) == []  # nobody has it yet
    await conn.execute("UPDATE discord_users SET role_ids = $1 WHERE user_id = '1'", [ROLE_OPT_OUT])
    assert summary(await listener.drain(conn)) == [("hide", "1")]
    await conn.execute("UPDATE discord_users SET role_ids = '{}' WHERE user_id = '1'")
    assert summary(await listener.drain(conn)) == [("upsert", "1")]


@pytest.mark.usefixtures("members")
async def test_renaming_a_role_reapplies_name_rules(conn: asyncpg.Connection, listener: Listener) -> None:
    await rule(conn, "opt_out_role", "invisible")
    await conn.execute("UPDATE discord_roles SET name = 'invisible' WHERE role_id = $1", ROLE_FAN)
    assert await hidden(conn) == {"3"}
    await conn.execute("DELETE FROM discord_roles WHERE role_id = $1", ROLE_FAN)
    assert await hidden(conn) == set()  # a role unknown by name matches by id only
    assert summary(await listener.drain(conn)) == [("hide", "3"), ("upsert", "3")]


@pytest.mark.usefixtures("members")
async def test_role_ids_alone_announce_nothing_and_rules_are_per_server(
    conn: asyncpg.Connection,
    listener: Listener,
) -> None:
    await conn.execute("UPDATE discord_users SET role_ids = $1 WHERE user_id = '1'", [ROLE_FAN])
    assert await listener.drain(conn) == []  # nothing a viewer sees changed
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ('200', 'Other')")
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color, role_ids) "
        "VALUES ('2', '200', 'two', 'online', '#000000', $1)",
        [ROLE_MOD],
    )
    await rule(conn, "exclude_role", ROLE_MOD)
    rows = await conn.fetch("SELECT server_id, user_id FROM discord_users WHERE hidden ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == [(SERVER, "2"), (SERVER, "3")]


async def test_a_bad_rule_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ($1, 'Guild')", SERVER)
    with pytest.raises(asyncpg.CheckViolationError, match="discord_visibility_rule_known"):
        await rule(conn, "hide_role", "mods")
    with pytest.raises(asyncpg.CheckViolationError, match="discord_visibility_user_snowflake"):
        await rule(conn, "hide_user", "alice")


@pytest.mark.usefixtures("members")
async def test_deleting_a_server_with_rules_deletes_everything_of_it(
    conn: asyncpg.Connection, listener: Listener
) -> None:
    await rule(conn, "exclude_role", "mods")
    await rule(conn, "hide_user", "1")
    await listener.drain(conn)
    await conn.execute("DELETE FROM discord_servers WHERE server_id = $1", SERVER)
    for table in ("discord_users", "discord_roles", "discord_visibility"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    deletes = [e for e in await listener.drain(conn) if isinstance(e, feed.UserDeleted)]
    assert sorted((e.user_id, e.hidden) for e in deletes) == [("1", False), ("2", False), ("3", False)]


async def test_a_servers_recompute_agrees_with_the_per_row_rule(conn: asyncpg.Connection) -> None:
    """dzone_recompute_hidden (set-based, for rule changes) and dzone_member_hidden (per row, for writes)
    give the same verdict on random rules, role names and members: ids, names, unknown roles, mixed."""
    rng = random.Random(15)
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ($1, 'Guild')", SERVER)
    roles = [(str(600 + i), f"role {i % 5}") for i in range(12)]  # names repeat: a name can match two
    await conn.executemany(
        "INSERT INTO discord_roles (server_id, role_id, name) VALUES ($1, $2, $3)",
        [(SERVER, role_id, name) for role_id, name in roles],
    )
    held = [role_id for role_id, _ in roles] + ["699"]  # 699: a role the table does not know
    await conn.executemany(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color, role_ids)"
        " VALUES ($1, $2, $1, 'online', '#000000', $3)",
        [(str(1000 + i), SERVER, rng.sample(held, rng.randint(0, 3))) for i in range(300)],
    )
    values = {
        "hide_user": [str(1000 + i) for i in range(300)],
        "exclude_role": held + [name for _, name in roles],
        "opt_out_role": held + [name for _, name in roles],
        "include_role": held + [name for _, name in roles],
    }
    checked = set()
    for _ in range(40):
        await conn.execute("DELETE FROM discord_visibility")
        for kind in rng.sample(sorted(values), rng.randint(1, 3)):
            for value in set(rng.sample(values[kind], rng.randint(1, 3))):
                await conn.execute(
                    "INSERT INTO discord_visibility (server_id, rule, value) VALUES ($1, $2, $3)",
                    SERVER,
                    kind,
                    value,
                )
        await conn.execute("ALTER TABLE discord_users DISABLE TRIGGER discord_users_hidden_update")
        await conn.execute("UPDATE discord_users SET hidden = NOT hidden WHERE user_id IN ('1000', '1001')")
        await conn.execute("ALTER TABLE discord_users ENABLE TRIGGER discord_users_hidden_update")
        await conn.execute("SELECT dzone_recompute_hidden($1)", SERVER)
        wrong = await conn.fetch(
            "SELECT user_id FROM discord_users WHERE server_id = $1"
            " AND hidden <> dzone_member_hidden(server_id, user_id, role_ids)",
            SERVER,
        )
        assert not wrong, [row["user_id"] for row in wrong]
        checked.add(await conn.fetchval("SELECT count(*) FROM discord_users WHERE hidden"))
    assert len(checked) > 10, checked  # the cases were not all alike


@pytest.mark.parametrize("stored_before", [False, True], ids=["first-sync-copy", "diff-path"])
async def test_a_bulk_sync_judges_its_rows_by_the_rules(
    conn: asyncpg.Connection, stored_before: bool
) -> None:
    """In bulk mode the per-row check is off; the sync judges the server set-based before its commit."""
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ($1, 'Guild')", SERVER)
    await conn.execute(
        "INSERT INTO discord_roles (server_id, role_id, name) VALUES ($1, $2, 'hide me from d-zone')",
        SERVER,
        ROLE_OPT_OUT,
    )
    await rule(conn, "opt_out_role", "hide me from d-zone")
    await rule(conn, "hide_user", "4")
    if stored_before:  # a stored member who is not hidden now, and one who is but no longer will be
        await store.full_sync(conn, SERVER, "Guild", [member("1", ""), member("2", ROLE_OPT_OUT)], 10**6)
    rows = [member("1", ROLE_OPT_OUT), member("2", ""), member("3", ROLE_MOD), member("4", "")]
    result = await store.full_sync(conn, SERVER, "Guild", rows, bulk_threshold=1)
    assert result.bulk
    assert await hidden(conn) == {"1", "4"}


def member(user_id: str, role_ids: str) -> MemberRow:
    return MemberRow(SERVER, user_id, f"member {user_id}", "online", "#000000", role_ids)
