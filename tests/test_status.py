"""``dzone status`` against a real database: servers by status, feed listeners, NOTIFY queue usage."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import pytest
from click.testing import CliRunner

from dzone.cli import main
from dzone.status import StatusError, read_status, render, table
from shared.feed import CHANNEL, LISTENER_APPLICATION_NAME
from tests.pg import PgServer
from tests.test_serve_support import running
from tests.waiting import wait_for

SEED = """
INSERT INTO discord_servers (server_id, name, alias, is_default) VALUES
    ('111', 'Alpha Guild', 'alpha', TRUE), ('222', 'Beta Guild', NULL, FALSE);
INSERT INTO discord_servers (server_id, name, enabled) VALUES ('333', 'Hidden Guild', FALSE);
INSERT INTO discord_users (user_id, server_id, username, status, role_color) VALUES
    ('1', '111', 'ann', 'online', '#ff0000'), ('2', '111', 'bob', 'online', '#00ff00'),
    ('3', '111', 'cy', 'idle', '#0000ff'), ('4', '111', 'di', 'offline', '#ffffff'),
    ('5', '222', 'ed', 'dnd', '#123456');
INSERT INTO discord_visibility (server_id, rule, value) VALUES ('111', 'hide_user', '3');
"""


def _run_status(url: str) -> str:
    # CliRunner runs the command in-process; the database is real.
    result = CliRunner().invoke(main, ["status"], env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    return result.output


def _line_of(output: str, needle: str) -> list[str]:
    lines = [line for line in output.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r} in {output}"
    return lines[0].split()


async def test_status_counts_members_by_status(conn: asyncpg.Connection, database_url: str) -> None:
    await conn.execute(SEED)
    output = await asyncio.to_thread(_run_status, database_url)
    assert "Servers (3)" in output
    alpha = _line_of(output, "Alpha Guild")
    # server_id alias name(2 words) flags members online idle dnd offline hidden date time
    assert alpha[:2] == ["111", "alpha"] and alpha[4] == "default"
    assert alpha[5:11] == ["4", "2", "1", "0", "1", "1"]  # cy is hidden by a rule
    beta = _line_of(output, "Beta Guild")
    assert beta[5:11] == ["1", "0", "0", "1", "0", "0"]
    assert "disabled" in _line_of(output, "Hidden Guild")
    assert "NOTIFY queue usage:" in output
    # the default server is listed first
    assert output.index("Alpha Guild") < output.index("Beta Guild")


async def test_status_lists_feed_listeners(conn: asyncpg.Connection, database_url: str) -> None:
    listener = await asyncpg.connect(
        database_url, server_settings={"application_name": "status-test-listener"}
    )
    try:
        await listener.add_listener(CHANNEL, lambda *_: None)
        status = await read_status(database_url)
        assert [li.application_name for li in status.listeners] == ["status-test-listener"]
        assert status.listeners[0].pid == listener.get_server_pid()
        assert "Feed listeners (1)" in render(status)
    finally:
        await listener.close()
    status = await read_status(database_url)
    assert status.listeners == []
    assert "no serve process is listening" in render(status)


async def test_status_lists_a_named_listener_after_other_queries(database_url: str) -> None:
    # a serve's listener probes its connection, so its last statement is no longer the LISTEN
    named = await asyncpg.connect(
        database_url, server_settings={"application_name": LISTENER_APPLICATION_NAME}
    )
    other = await asyncpg.connect(database_url, server_settings={"application_name": "not-a-listener"})
    try:
        await named.add_listener(CHANNEL, lambda *_: None)
        await named.fetchval("SELECT 1")
        await other.fetchval("SELECT 1")
        status = await read_status(database_url)
        assert [li.pid for li in status.listeners] == [named.get_server_pid()]
    finally:
        await named.close()
        await other.close()


async def test_status_reports_queue_usage_as_a_fraction(database_url: str) -> None:
    status = await read_status(database_url)
    assert 0.0 <= status.queue_usage < 1.0
    assert status.servers == []
    assert "no servers yet" in render(status)


async def test_status_explains_an_unmigrated_database(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP VIEW server_presence_summary")
    finally:
        await conn.close()
    with pytest.raises(StatusError, match="dzone migrate"):
        await read_status(database_url)


def test_status_without_database_url_names_the_variable() -> None:
    result = CliRunner().invoke(main, ["status"], env={"DATABASE_URL": None})
    assert result.exit_code != 0
    assert "DATABASE_URL is not set" in result.output


def test_status_with_unreachable_database_says_so() -> None:
    # port 1 on loopback: nothing listens there, so connect is refused at once
    result = CliRunner().invoke(
        main, ["status", "--timeout", "3"], env={"DATABASE_URL": "postgresql://u:secret@127.0.0.1:1/x"}
    )
    assert result.exit_code != 0
    assert "cannot connect" in result.output
    assert "secret" not in result.output


def test_table_aligns_columns() -> None:
    text = table(["name", "n"], [["a", "10"], ["long name", "2"]])
    lines = text.splitlines()
    assert lines[0] == "name        n"
    assert lines[2] == "a          10"
    assert lines[3] == "long name   2"


async def test_status_shows_ingest_shards_and_marks_silent_ones_stale(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await conn.execute(
        """
        INSERT INTO ingest_heartbeat
            (instance, shard_id, shard_count, state, latency_ms, pending_rows, started_at, updated_at)
        VALUES ('host-a:1', 0, 2, 'ready', 41.5, 3, now(), now()),
               ('host-b:2', 1, 2, 'ready', NULL, 0, now(), now() - interval '5 minutes')
        """
    )
    output = await asyncio.to_thread(_run_status, database_url)
    assert "Ingest shards (2)" in output
    assert _line_of(output, "host-a:1")[:6] == ["0", "2", "host-a:1", "ready", "42", "3"]
    assert _line_of(output, "host-b:2")[3:5] == ["stale", "(ready)"]


async def test_status_tells_a_live_listener_from_a_deaf_one(pg: PgServer, database_url: str) -> None:
    if pg.local is None:
        pytest.skip("freezes a backend of the embedded PostgreSQL (unset DATABASE_URL)")
    # a long probe timeout: the serve must not re-open its frozen listener while status looks
    async with running(database_url, listener_probe_timeout_s=60.0) as serve:
        await wait_for(lambda: serve.readiness()[0], 15, message="the serve's feed proven")
        status = await read_status(database_url, feed_wait_s=5.0)
        [listener] = status.listeners
        assert status.answers is not None and [a.listener_pid for a in status.answers] == [listener.pid]
        assert "live (" in render(status)
        os.kill(listener.pid, signal.SIGSTOP)  # the serve's LISTEN backend: connected, hears nothing
        try:
            status = await read_status(database_url, feed_wait_s=1.0)
            assert [li.pid for li in status.listeners] == [listener.pid]
            assert status.answers == []
            assert "DEAF (no answer in 1s)" in render(status)
        finally:
            os.kill(listener.pid, signal.SIGCONT)


async def test_status_shows_the_last_changes_made_from_discord(
    conn: asyncpg.Connection, database_url: str
) -> None:
    assert "Last changes from Discord" not in render(await read_status(database_url))
    await conn.execute(
        "INSERT INTO command_audit (server_id, user_id, user_name, command, change) VALUES "
        "('111', '7', 'alice', '/dzone settings', 'passworded: off -> on'), "
        "('111', '8', 'bob', '/dzone hide-me', 'hide_user: hidden themself')"
    )
    output = render(await read_status(database_url))
    assert "Last changes from Discord (2" in output
    assert "alice (7)" in output and "passworded: off -> on" in output
    assert output.index("bob (8)") < output.index("alice (7)")  # one transaction: the later row first
