"""The schema as alembic builds it: round trips, migrations/schema.sql exactly, landed revisions frozen,
the guide's SQL verbatim, and every constraint."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from shared.db import MIGRATIONS, alembic_config, downgrade, migrate
from tests import schema_file
from tests.pg import PgServer, with_database

# sha256 of every revision that has a successor. A landed revision is frozen: a database migrated before
# an edit in place would silently differ from a new one. When a new head lands, pin its predecessor here.
LANDED_REVISIONS = {
    "0001_schema.py": "f1f4a4d58c97b1277213a13824472d89ad924993550060bcac5d07ae7301bf04",
    "0002_channels.py": "8dd20561f9fde50c5dac2f29f5a6462931dcb18e252d8e7714ed8a969e755f4e",
    "0003_server_feed.py": "36de055556480a7ee957f4ca05ae7f9a25f6532a615df4c8507606975c956722",
    "0004_ingest_heartbeat.py": "f6e0dc701b561308dccc6a39922c3fd28a54c0e927562537ca95583207329982",
    "0005_visibility.py": "3a9545683ab2c77bc15ee2a55fd155f6ae5de84b67466661cb362ee609d38486",
    "0006_cheaper_row_checks.py": "1e8f0b3881f4b6c26f13aa3dbd96d5c6ad442902cd66feeb2ffb4bf1d4b3253b",
}


@pytest.fixture
def empty_database_url(pg: PgServer):
    """A database without any schema, for migration tests."""
    import uuid

    from tests.pg import _admin, drop_database

    name = f"empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg.admin_url, f"CREATE DATABASE {name}"))
    try:
        yield with_database(pg.admin_url, name)
    finally:
        drop_database(pg, name)


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {r["table_name"] for r in rows}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade_round_trip(empty_database_url: str) -> None:
    schema = {"discord_servers", "discord_users", "discord_channels", "server_presence_summary"}
    migrate(empty_database_url)
    migrate(empty_database_url)  # twice is a no-op
    assert schema <= asyncio.run(_tables(empty_database_url))
    downgrade(empty_database_url)
    assert asyncio.run(_tables(empty_database_url)) == {"alembic_version"}
    migrate(empty_database_url)
    assert schema <= asyncio.run(_tables(empty_database_url))


def test_upgrade_head_on_an_empty_database_gives_exactly_schema_sql(empty_database_url: str) -> None:
    if (major := schema_file.pg_dump_major()) != schema_file.PG_DUMP_MAJOR:
        pytest.skip(f"pg_dump {major} prints schema.sql differently from pg_dump {schema_file.PG_DUMP_MAJOR}")
    migrate(empty_database_url)
    built, kept = schema_file.dump(empty_database_url), schema_file.SCHEMA_FILE.read_text()
    if built != kept:
        diff = difflib.unified_diff(
            kept.splitlines(), built.splitlines(), "migrations/schema.sql", "upgrade head", lineterm=""
        )
        pytest.fail(
            "migrations/schema.sql is not what `alembic upgrade head` builds on an empty database. After adding "
            f"a revision, regenerate it with `{schema_file.REGENERATE}` and commit it; never edit it by hand.\n"
            + "\n".join(list(diff)[:200])
        )


def _revisions_with_a_successor() -> set[str]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("postgresql://unused/"))  # type: ignore[arg-type]
    heads = set(scripts.get_heads())
    return {Path(script.path).name for script in scripts.walk_revisions() if script.revision not in heads}


def test_landed_revisions_are_frozen() -> None:
    landed = _revisions_with_a_successor()
    assert landed == set(LANDED_REVISIONS), (
        "LANDED_REVISIONS in tests/test_schema.py must pin exactly the revisions that have a successor: "
        f"add {sorted(landed - set(LANDED_REVISIONS))}, remove {sorted(set(LANDED_REVISIONS) - landed)}"
    )
    for name, pinned in LANDED_REVISIONS.items():
        actual = hashlib.sha256((MIGRATIONS / "versions" / name).read_bytes()).hexdigest()
        assert actual == pinned, (
            f"migrations/versions/{name} was edited after a later revision landed: a database migrated "
            "before the edit would differ from a new one. Revert the edit and add a new revision in "
            "migrations/versions/ that makes the change (then `make schema`)."
        )


def test_dzone_migrate_command_creates_schema_visible_in_psql(empty_database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    subprocess.run([sys.executable, "-m", "dzone", "migrate"], env=env, check=True, timeout=120)
    described = subprocess.run(
        ["psql", empty_database_url, "-X", "-c", r"\dt", "-c", r"\dv", "-c", r"\d discord_users"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for name in (
        "discord_servers",
        "discord_users",
        "server_presence_summary",
        "discord_users_feed_update",
        "discord_users_feed_insert_delete",
        "discord_users_touch",
    ):
        assert name in described


def test_dzone_migrate_without_database_url_fails_clearly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "dzone", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


# The guide's SQL (d-back docs, "Using asyncpg with PostgreSQL"), copied verbatim.
GUIDE_USERS_SQL = """
                SELECT user_id, username, status, role_color
                FROM discord_users
                WHERE server_id = $1 AND status != 'offline'
                """
GUIDE_SERVERS_SQL = """
                SELECT server_id, name, passworded, is_default
                FROM discord_servers
                WHERE enabled = true
                """


async def test_guide_queries_run_verbatim(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO discord_servers (server_id, name, is_default) VALUES ('232769614004748288', "
        "'D-World', true), ('482241773318701056', 'Docs', false)"
    )
    await conn.execute("UPDATE discord_servers SET enabled = false WHERE server_id = '482241773318701056'")
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color) VALUES "
        "('1', '232769614004748288', 'vegeta897', 'online', '#ff6b6b'), "
        "('2', '232769614004748288', 'NNTin', 'offline', '#99aab5')"
    )
    users = await conn.fetch(GUIDE_USERS_SQL, "232769614004748288")
    assert [(r["user_id"], r["username"], r["status"], r["role_color"]) for r in users] == [
        ("1", "vegeta897", "online", "#ff6b6b")
    ]
    servers = await conn.fetch(GUIDE_SERVERS_SQL)
    assert [(r["server_id"], r["name"], r["passworded"], r["is_default"]) for r in servers] == [
        ("232769614004748288", "D-World", False, True)
    ]


async def test_guide_schema_columns_and_index_exist(conn: asyncpg.Connection) -> None:
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, character_maximum_length FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name IN ('discord_servers', 'discord_users')"
    )
    found = {
        (r["table_name"], r["column_name"]): (r["data_type"], r["character_maximum_length"]) for r in columns
    }
    expected = {
        ("discord_servers", "server_id"): ("character varying", 20),
        ("discord_servers", "name"): ("character varying", 100),
        ("discord_servers", "passworded"): ("boolean", None),
        ("discord_servers", "is_default"): ("boolean", None),
        ("discord_servers", "enabled"): ("boolean", None),
        ("discord_servers", "created_at"): ("timestamp without time zone", None),
        ("discord_users", "user_id"): ("character varying", 20),
        ("discord_users", "server_id"): ("character varying", 20),
        ("discord_users", "username"): ("character varying", 100),
        ("discord_users", "status"): ("character varying", 10),
        ("discord_users", "role_color"): ("character varying", 7),
        ("discord_users", "last_seen"): ("timestamp without time zone", None),
    }
    for key, value in expected.items():
        assert found[key] == value, key
    assert (
        await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_users_server_status'")
        == 1
    )


SERVER = "INSERT INTO discord_servers (server_id, name) VALUES ('100', 'Guild')"


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO discord_users VALUES ('1', '100', 'a', 'away', '#000000')",
            "discord_users_status_known",
        ),
        (
            "INSERT INTO discord_users VALUES ('1', '100', 'a', 'online', '#GGGGGG')",
            "discord_users_role_color_hex",
        ),
        (
            "INSERT INTO discord_users VALUES ('1', '100', 'a', 'online', '#ABCDEF')",
            "discord_users_role_color_hex",
        ),
        (
            "INSERT INTO discord_users VALUES ('1', '100', 'a', 'online', 'red')",
            "discord_users_role_color_hex",
        ),
        (
            "INSERT INTO discord_users VALUES ('u1', '100', 'a', 'online', '#000000')",
            "discord_users_user_id_snowflake",
        ),
        (
            "INSERT INTO discord_users VALUES ('1', '999', 'a', 'online', '#000000')",
            "discord_users_server_id_fkey",
        ),
        (
            "INSERT INTO discord_servers (server_id, name) VALUES ('abc', 'x')",
            "discord_servers_server_id_snowflake",
        ),
        (
            "INSERT INTO discord_servers (server_id, name) VALUES ('101', '  ')",
            "discord_servers_name_not_blank",
        ),
        (
            "INSERT INTO discord_servers (server_id, name, alias) VALUES ('101', 'x', '12345')",
            "discord_servers_alias_format",
        ),
        (
            "INSERT INTO discord_servers (server_id, name, alias) VALUES ('101', 'x', 'has space')",
            "discord_servers_alias_format",
        ),
        ("UPDATE discord_servers SET oauth_client_id = 'nope'", "discord_servers_oauth_client_id_snowflake"),
        (
            "INSERT INTO discord_servers (server_id, name, is_default) VALUES ('101', 'x', true), ('102', 'y', true)",
            "discord_servers_one_default",
        ),
        (
            "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('100', 'c1', 'x', true)",
            "discord_channels_channel_id_snowflake",
        ),
        (
            "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('999', '1', 'x', true)",
            "discord_channels_server_id_fkey",
        ),
        (
            "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('100', '1', 'x', NULL)",
            None,
        ),
    ],
)
async def test_constraints_reject_bad_rows(
    conn: asyncpg.Connection, statement: str, constraint: str | None
) -> None:
    await conn.execute(SERVER)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
        await conn.execute(statement)
    if constraint is None:  # NOT NULL
        assert isinstance(caught.value, asyncpg.NotNullViolationError)
        return
    assert caught.value.constraint_name == constraint
    assert constraint in str(caught.value)


async def test_alias_is_unique(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO discord_servers (server_id, name, alias) VALUES ('1', 'a', 'dworld')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO discord_servers (server_id, name, alias) VALUES ('2', 'b', 'dworld')")


async def test_deleting_a_server_cascades_to_its_users_and_channels(conn: asyncpg.Connection) -> None:
    await conn.execute(SERVER)
    await conn.execute("INSERT INTO discord_users VALUES ('1', '100', 'a', 'online', '#000000')")
    await conn.execute(
        "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('100', '5', 'g', true)"
    )
    await conn.execute("DELETE FROM discord_servers WHERE server_id = '100'")
    assert await conn.fetchval("SELECT count(*) FROM discord_users") == 0
    assert await conn.fetchval("SELECT count(*) FROM discord_channels") == 0


async def test_channel_relay_defaults_to_following_public(conn: asyncpg.Connection) -> None:
    await conn.execute(SERVER)
    await conn.execute(
        "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('100', '5', 'g', true)"
    )
    assert await conn.fetchval("SELECT relay FROM discord_channels") is None
    comment = await conn.fetchval("SELECT col_description('discord_channels'::regclass, 5)")
    assert comment and "never written by the ingest" in comment


async def test_operator_defaults(conn: asyncpg.Connection) -> None:
    await conn.execute(SERVER)
    row = await conn.fetchrow("SELECT * FROM discord_servers")
    assert row is not None
    assert (row["hide_offline"], row["relay_messages"], row["enabled"], row["passworded"]) == (
        True,
        True,
        True,
        False,
    )
    assert row["alias"] is None and row["departed_at"] is None


async def test_presence_summary_view(conn: asyncpg.Connection) -> None:
    await conn.execute(SERVER)
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ('200', 'Empty')")
    await conn.execute(
        "INSERT INTO discord_users VALUES ('1', '100', 'a', 'online', '#000000'), ('2', '100', 'b', 'idle', "
        "'#000000'), ('3', '100', 'c', 'offline', '#000000'), ('4', '100', 'd', 'offline', '#000000'), "
        "('5', '100', 'e', 'dnd', '#000000')"
    )
    rows = {r["server_id"]: r for r in await conn.fetch("SELECT * FROM server_presence_summary")}
    busy = rows["100"]
    assert (busy["members"], busy["online"], busy["idle"], busy["dnd"], busy["offline"]) == (5, 1, 1, 1, 2)
    assert busy["last_change"] is not None
    assert rows["200"]["members"] == 0 and rows["200"]["last_change"] is None


async def test_last_seen_moves_only_on_real_change(conn: asyncpg.Connection) -> None:
    await conn.execute(SERVER)
    await conn.execute(
        "INSERT INTO discord_users (user_id, server_id, username, status, role_color, last_seen) "
        "VALUES ('1', '100', 'a', 'online', '#000000', '2020-01-01')"
    )
    await conn.execute("UPDATE discord_users SET status = 'online'")
    assert str(await conn.fetchval("SELECT last_seen FROM discord_users")) == "2020-01-01 00:00:00"
    await conn.execute("UPDATE discord_users SET status = 'idle'")
    assert (await conn.fetchval("SELECT last_seen FROM discord_users")).year > 2020


async def test_row_checks_refuse_exactly_what_the_regular_expressions_refuse(
    conn: asyncpg.Connection,
) -> None:
    # Migration 0006 wrote the two regex CHECKs with string functions (cheaper per row): same rules.
    import importlib

    checks = importlib.import_module("migrations.versions.0006_cheaper_row_checks")
    user_ids = ["", "0", "7", "1" * 20, "1" * 21, "12a", " 1", "1 ", "1\n", "-1", "١٢", "1.5", "+1"]
    colours = ["#000000", "#abcdef", "#ABCDEF", "#abcde", "#abcdeff", "abcdef0", "#abcdeg", "##abcde",
               "#abc\ndef", "#0a0b0c", "#-12345", " #00000"]  # fmt: skip
    for column, values, pattern, rule in (
        ("user_id", user_ids, "^[0-9]{1,20}$", checks.USER_ID_SNOWFLAKE),
        ("role_color", colours, "^#[0-9a-f]{6}$", checks.ROLE_COLOR_HEX),
    ):
        rows = await conn.fetch(
            f"SELECT {column}, {column} ~ $2 AS by_regex, {rule} AS by_rule FROM unnest($1::text[]) AS {column}",
            values,
            pattern,
        )
        assert [(r[column], r["by_rule"]) for r in rows] == [(r[column], r["by_regex"]) for r in rows]
        assert any(r["by_regex"] for r in rows) and not all(r["by_regex"] for r in rows)
