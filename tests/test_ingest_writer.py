"""The coalescing writer and the full sync against a real PostgreSQL (no gateway needed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from structlog.testing import capture_logs

from ingest.channels import ChannelRow
from ingest.mapping import MemberRow
from ingest.writer import Writer, WriterConfig
from shared.db import migrate
from shared.feed import CHANNEL, ChatMessage, ServerChanged, ServerResync, UserDeleted, UserUpserted, decode
from tests.ingest_helpers import DictSource, FeedRecorder, expected_rows, make_rows, table_rows
from tests.pg import PgServer, with_database
from tests.waiting import wait_for

G1, G2 = "111", "222"


@pytest.fixture
async def feed(database_url: str) -> AsyncIterator[FeedRecorder]:
    recorder = await FeedRecorder().start(database_url)
    yield recorder
    await recorder.stop()


def make_writer(url: str, source: DictSource, **overrides: float) -> Writer:
    config = WriterConfig(**{"bulk_threshold": 50, "stats_interval_s": 0, **overrides})  # type: ignore[arg-type]
    writer = Writer(url, source, config)
    writer.start()
    return writer


async def test_full_sync_then_resync_announces_only_real_changes(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource()
    rows = make_rows(G1, 10)
    source.set_guild(G1, "Guild one", rows)
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        assert await table_rows(conn, G1) == expected_rows(rows)
        assert await conn.fetchval("SELECT name FROM discord_servers WHERE server_id = $1", G1) == "Guild one"
        await wait_for(lambda: len(feed.of(UserUpserted)) == 10, message="10 upserts")

        # While "away": one left, one changed status, one joined, the rest unchanged.
        feed.events.clear()
        changed = rows[1]._replace(status="idle")
        joined = MemberRow(G1, "9999", "newcomer", "online", "#123456")
        now = [rows[0], changed, *rows[3:], joined]
        source.set_guild(G1, "Guild one renamed", now)
        writer.sync_guild(G1)
        await writer.wait_idle()
        assert await table_rows(conn, G1) == expected_rows(now)
        await wait_for(lambda: len(feed.of(UserDeleted)) == 1 and len(feed.of(UserUpserted)) == 2)
        assert {e.user_id for e in feed.of(UserUpserted)} == {changed.user_id, "9999"}  # type: ignore[union-attr]
        assert feed.of(UserDeleted)[0].user_id == rows[2].user_id  # type: ignore[union-attr]
        assert not feed.of(ServerResync)
        assert await conn.fetchval("SELECT name FROM discord_servers WHERE server_id = $1", G1) == (
            "Guild one renamed"
        )
    finally:
        await writer.close()


async def test_big_sync_uses_bulk_mode_and_one_resync(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource()
    source.set_guild(G1, "big", make_rows(G1, 300))
    source.set_guild(G2, "other", make_rows(G2, 5))
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        writer.sync_guild(G2)
        await writer.wait_idle()
        assert len(await table_rows(conn, G1)) == 300
        await wait_for(lambda: len(feed.of(UserUpserted)) == 5, message="G2's per-row upserts")
        assert [e.server_id for e in feed.of(ServerResync)] == [G1]
        assert all(e.server_id == G2 for e in feed.of(UserUpserted))
        # Nothing changed: a re-sync announces nothing about users.
        feed.events.clear()
        writer.sync_guild(G1)
        await writer.wait_idle()
        writer.put(make_rows(G2, 1, status="dnd")[0])  # a marker event that follows in commit order
        await wait_for(lambda: feed.of(UserUpserted), message="marker")
        assert not feed.of(ServerResync) and len(feed.of(UserUpserted)) == 1
    finally:
        await writer.close()


async def test_syncs_of_one_flush_run_on_several_connections_and_each_is_exact(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Three new guilds (copied straight in) and one already stored (diffed: a change, a departure).
    source = DictSource()
    guilds = {server_id: make_rows(server_id, 300) for server_id in ("301", "302", "303")}
    stored = make_rows(G1, 60)
    source.set_guild(G1, "stored", stored)
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        notifiers: dict[str, int] = {}  # server_id of each resync -> the backend that announced it

        def record(_conn: object, pid: int, _channel: str, payload: str) -> None:
            event = decode(payload)
            if isinstance(event, ServerResync):
                notifiers[event.server_id] = pid

        await conn.add_listener(CHANNEL, record)
        for server_id, rows in guilds.items():
            source.set_guild(server_id, f"guild {server_id}", rows)
        now = [stored[0]._replace(status="dnd"), *stored[2:]]
        source.set_guild(G1, "stored", now)
        for server_id in (*guilds, G1):
            writer.sync_guild(server_id)
        await writer.wait_idle()
        for server_id, rows in guilds.items():
            assert await table_rows(conn, server_id) == expected_rows(rows)
        assert await table_rows(conn, G1) == expected_rows(now)
        await wait_for(lambda: len(notifiers) == 3, message="a resync per new guild")
        assert len(set(notifiers.values())) >= 2, notifiers  # more than one connection did the work
        assert writer.stats.full_syncs == 5
    finally:
        await writer.close()


async def test_a_sync_connection_killed_mid_copy_loses_no_guild(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Four guilds big enough that their COPYs overlap; one of the backends copying is terminated.
    source = DictSource()
    guilds = {server_id: make_rows(server_id, 40_000) for server_id in ("401", "402", "403", "404")}
    for server_id, rows in guilds.items():
        source.set_guild(server_id, f"guild {server_id}", rows)
    writer = make_writer(database_url, source, backoff_max_s=0.2)
    try:
        for server_id in guilds:
            writer.sync_guild(server_id)
        copying = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY%discord_users%' AND pid <> pg_backend_pid()"
        pid = await wait_for(lambda: conn.fetchval(copying), timeout=30, message="a sync copying")
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        started = asyncio.get_running_loop().time()
        await writer.wait_idle(timeout=60)
        for server_id, rows in guilds.items():
            assert await table_rows(conn, server_id) == expected_rows(rows), server_id
        assert writer.stats.failures >= 1
        print(f"4 guilds exact {asyncio.get_running_loop().time() - started:.2f}s after the kill")
    finally:
        await writer.close()


async def test_live_updates_coalesce_and_noops_announce_nothing(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource()
    rows = make_rows(G1, 3)
    source.set_guild(G1, "g", rows)
    writer = make_writer(database_url, source, batch_max_delay_s=0.2)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        await wait_for(lambda: len(feed.of(UserUpserted)) == 3)
        feed.events.clear()
        for status in ("idle", "dnd", "offline", "online", "dnd"):
            writer.put(rows[0]._replace(status=status))
        assert writer.pending_rows == 1
        writer.put(rows[1])  # same as stored: no-op
        writer.remove(G1, rows[2].user_id)
        await writer.wait_idle()
        writer.put(rows[1]._replace(username="marker"))  # commits after: its event comes last
        await wait_for(lambda: any(getattr(e, "username", "") == "marker" for e in feed.events))
        summary = {(type(e).__name__, e.user_id, getattr(e, "status", None)) for e in feed.events}  # type: ignore[union-attr]
        assert summary == {
            ("UserDeleted", rows[2].user_id, None),
            ("UserUpserted", rows[0].user_id, "dnd"),
            ("UserUpserted", rows[1].user_id, "online"),  # the marker; the earlier no-op announced nothing
        }
        assert len(feed.events) == 3
        writer.put(rows[1])
        await writer.wait_idle()
        assert await table_rows(conn, G1) == expected_rows([rows[0]._replace(status="dnd"), rows[1]])
    finally:
        await writer.close()


async def test_bad_rows_and_unknown_servers_do_not_sink_the_batch(
    database_url: str, conn: asyncpg.Connection
) -> None:
    source = DictSource()
    source.set_guild(G1, "g", [])
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        good = make_rows(G1, 3)
        for row in good:
            writer.put(row)
        writer.put(MemberRow(G1, "not-a-snowflake", "x", "online", "#000000"))
        writer.put(MemberRow("333", "5", "no server row", "online", "#000000"))
        await writer.wait_idle()
        assert await table_rows(conn, G1) == expected_rows(good)
        assert writer.stats.rows_rejected == 1
        assert await conn.fetchval("SELECT count(*) FROM discord_users WHERE server_id = '333'") == 0
    finally:
        await writer.close()


async def test_messages_keep_order_respect_relay_and_strip_nul(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource()
    source.set_guild(G1, "relayed", [], [ChannelRow(G1, "70", "general", True)])
    source.set_guild(G2, "quiet", [], [ChannelRow(G2, "70", "general", True)])
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        writer.sync_guild(G2)
        await writer.wait_idle()
        await conn.execute("UPDATE discord_servers SET relay_messages = false WHERE server_id = $1", G2)
        for i in range(50):
            writer.relay_message(G1 if i % 5 else G2, "7", "70", str(i), f"line\x00 {i}\nnext")
        await writer.wait_idle()
        await wait_for(lambda: len(feed.of(ChatMessage)) == 40, message="40 relayed messages")
        messages = feed.of(ChatMessage)
        assert [m.message_id for m in messages] == [str(i) for i in range(50) if i % 5]  # type: ignore[union-attr]
        assert messages[0].text == "line 1 next"  # type: ignore[union-attr]
    finally:
        await writer.close()


async def test_depart_and_reconcile_touch_only_owned_guilds(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource(owned={G1, G2})
    source.set_guild(G1, "g1", make_rows(G1, 4))
    source.set_guild(G2, "g2", make_rows(G2, 4))
    await conn.execute("INSERT INTO discord_servers (server_id, name, alias) VALUES ('444', 'not ours', 'x')")
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        writer.sync_guild(G2)
        await writer.wait_idle()
        writer.depart_guild(G1)
        writer.put(make_rows(G1, 1, status="dnd")[0])  # after the departure: a new row for the guild...
        await writer.wait_idle()
        departed = await conn.fetchrow(
            "SELECT departed_at, alias FROM discord_servers WHERE server_id = $1", G1
        )
        assert departed["departed_at"] is not None
        assert len(await table_rows(conn, G1)) == 1  # ...which is written (live events are newer)
        # Startup after G2 vanished while we were away: only G2 (ours) is departed, '444' is left alone.
        writer.reconcile([])
        await writer.wait_idle()
        states = dict(await conn.fetch("SELECT server_id, departed_at IS NOT NULL FROM discord_servers"))
        assert states == {G1: True, G2: True, "444": False}
        assert await table_rows(conn, G2) == {}
        # The bot comes back: the sync clears departed_at and rewrites the members.
        writer.sync_guild(G2)
        await writer.wait_idle()
        assert not await conn.fetchval(
            "SELECT departed_at IS NOT NULL FROM discord_servers WHERE server_id = $1", G2
        )
        assert len(await table_rows(conn, G2)) == 4
    finally:
        await writer.close()


async def test_postgres_restart_loses_nothing(pg: PgServer, database_url: str) -> None:
    if pg.local is None:
        pytest.skip("needs the embedded PostgreSQL to restart it")
    source = DictSource()
    rows = make_rows(G1, 200)
    source.set_guild(G1, "g", rows)
    writer = make_writer(database_url, source, backoff_max_s=0.5)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        latest: dict[str, MemberRow] = {}
        restart = asyncio.create_task(asyncio.to_thread(pg.restart, 1.0))
        statuses = ("online", "idle", "dnd", "offline")
        i = 0
        while not restart.done() or i < 2000:
            row = rows[i % len(rows)]._replace(status=statuses[(i // len(rows)) % 4])
            writer.put(row)
            latest[row.user_id] = row
            i += 1
            await asyncio.sleep(0.0005)
        await restart
        await writer.wait_idle(timeout=30)
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            assert await table_rows(conn, G1) == expected_rows(latest.values())
        finally:
            await conn.close()
        assert writer.stats.reconnects >= 1
    finally:
        await writer.close()


async def test_close_flushes_pending(database_url: str, conn: asyncpg.Connection) -> None:
    source = DictSource()
    source.set_guild(G1, "g", [])
    writer = make_writer(database_url, source, batch_max_delay_s=5.0)
    writer.sync_guild(G1)
    await writer.wait_idle()
    rows = make_rows(G1, 10)
    for row in rows:
        writer.put(row)
    assert await writer.close(timeout=10)
    assert await table_rows(conn, G1) == expected_rows(rows)


async def test_server_rename(database_url: str, conn: asyncpg.Connection, feed: FeedRecorder) -> None:
    source = DictSource()
    source.set_guild(G1, "before", [])
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        feed.events.clear()
        writer.rename_guild(G1, "after")
        await writer.wait_idle()
        assert await conn.fetchval("SELECT name FROM discord_servers WHERE server_id = $1", G1) == "after"
        await wait_for(lambda: feed.of(ServerChanged), message="server event")
    finally:
        await writer.close()


async def test_channel_rows_follow_the_source_and_keep_the_operators_relay(
    database_url: str, conn: asyncpg.Connection
) -> None:
    source = DictSource()
    source.set_guild(
        G1, "g1", [], [ChannelRow(G1, "1", "general", True), ChannelRow(G1, "2", "staff", False)]
    )
    writer = make_writer(database_url, source)

    async def stored() -> set[tuple[str, str, bool, bool | None]]:
        records = await conn.fetch("SELECT channel_id, name, public, relay FROM discord_channels")
        return {(r["channel_id"], r["name"], r["public"], r["relay"]) for r in records}

    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        assert await stored() == {("1", "general", True, None), ("2", "staff", False, None)}
        await conn.execute("UPDATE discord_channels SET relay = TRUE WHERE channel_id = '2'")
        # a channel renamed and made private, one deleted, one created: one re-read of the guild
        source.channel_sets[G1] = [ChannelRow(G1, "2", "staff-2", True), ChannelRow(G1, "3", "new", True)]
        writer.sync_channels(G1)
        await writer.wait_idle()
        assert await stored() == {("2", "staff-2", True, True), ("3", "new", True, None)}
    finally:
        await writer.close()


async def test_relay_needs_a_channel_row_that_says_so_and_a_new_channel_counts_in_the_same_flush(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    source = DictSource()
    source.set_guild(
        G1, "g1", [], [ChannelRow(G1, "1", "general", True), ChannelRow(G1, "2", "staff", False)]
    )
    # one long batch window: the channel event and the message below land in one flush
    writer = make_writer(database_url, source, batch_max_delay_s=0.5)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        source.channel_sets[G1].append(ChannelRow(G1, "3", "brand-new", True))
        writer.sync_channels(G1)
        writer.relay_message(G1, "7", "3", "30", "in the new channel")
        writer.relay_message(G1, "7", "2", "20", "staff only")
        writer.relay_message(G1, "7", "99", "990", "unknown channel")
        writer.relay_message(G1, "7", "1", "10", "public")
        await writer.wait_idle()
        await wait_for(lambda: len(feed.of(ChatMessage)) >= 2, message="two relayed messages")
        assert [m.message_id for m in feed.of(ChatMessage)] == ["30", "10"]  # type: ignore[union-attr]
        assert (writer.stats.messages_relayed, writer.stats.messages_withheld) == (2, 2)
        # the operator's override counts from its commit, both ways
        await conn.execute(
            "UPDATE discord_channels SET relay = (channel_id = '2') WHERE channel_id IN ('1', '2')"
        )
        feed.events.clear()
        writer.relay_message(G1, "7", "1", "11", "public, relay off")
        writer.relay_message(G1, "7", "2", "21", "staff, relay on")
        await writer.wait_idle()
        await wait_for(lambda: feed.of(ChatMessage), message="the override's message")
        assert [m.message_id for m in feed.of(ChatMessage)] == ["21"]  # type: ignore[union-attr]
    finally:
        await writer.close()


async def test_refused_channel_rows_fail_closed(database_url: str, conn: asyncpg.Connection) -> None:
    source = DictSource()
    source.set_guild(G1, "g1", [], [ChannelRow(G1, "1", "general", True), ChannelRow(G1, "2", "chat", True)])
    writer = make_writer(database_url, source)
    try:
        writer.sync_guild(G1)
        await writer.wait_idle()
        await conn.execute("UPDATE discord_channels SET relay = TRUE WHERE channel_id = '2'")
        source.channel_sets[G1] = [
            ChannelRow(G1, "1", "general", True),
            ChannelRow(G1, "not-an-id", "x", True),
        ]
        writer.sync_channels(G1)
        await writer.wait_idle()
        records = await conn.fetch(
            "SELECT channel_id, public, relay FROM discord_channels ORDER BY channel_id"
        )
        # nothing relays any more but what the operator chose; the worker goes on
        assert [tuple(r) for r in records] == [("1", False, None), ("2", False, True)]
        source.channel_sets[G1] = [ChannelRow(G1, "1", "general", True)]
        writer.sync_channels(G1)
        await writer.wait_idle()
        assert await conn.fetchval("SELECT public FROM discord_channels WHERE channel_id = '1'") is True
    finally:
        await writer.close()


async def test_missing_schema_is_permanent_retried_and_recovers(pg: PgServer) -> None:
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg.admin_url, timeout=10)
    await admin.execute(f"CREATE DATABASE {name}")  # no tables: an operator forgot `dzone migrate`
    url = with_database(pg.admin_url, name)
    source = DictSource()
    rows = make_rows(G1, 20)
    source.set_guild(G1, "g", rows)
    try:
        with capture_logs() as logs:
            writer = make_writer(url, source, backoff_initial_s=0.05, backoff_max_s=0.2)
            try:
                writer.sync_guild(G1)
                await wait_for(lambda: writer.stats.failures >= 5, timeout=10, message="retries")
                health = writer.health
                assert not health.database_ok and health.permanent, health
                assert health.error is not None and "UndefinedTable" in health.error
                await asyncio.to_thread(migrate, url)
                await writer.wait_idle(timeout=10)
                assert writer.health.database_ok
            finally:
                await writer.close()
        conn = await asyncpg.connect(url, timeout=10)
        try:
            assert await table_rows(conn, G1) == expected_rows(rows)
        finally:
            await conn.close()
        failures = [e for e in logs if e["event"] in ("database_write_failed", "database_still_failing")]
        assert 1 <= len(failures) < writer.stats.failures, "every failure logged: a tight log loop"
        assert any(e["event"] == "database_recovered" for e in logs)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
