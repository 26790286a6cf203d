"""The ingest against the simulator: the real discord.py, a real PostgreSQL, rows equal to the truth."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ingest.worker import IngestWorker
from shared.feed import ChatMessage, ServerChanged, UserDeleted, UserUpserted
from shared.settings import IngestSettings, load
from simulator import SimConfig, Simulator
from simulator.testing import SIM_TOKEN
from tests.ingest_helpers import FeedRecorder, db_view, differences, truth_rows
from tests.pg import PgServer
from tests.waiting import wait_for


def settings_for(sim: Simulator, database_url: str, **overrides: Any) -> IngestSettings:
    return load(
        IngestSettings,
        DISCORD_BOT_TOKEN=SIM_TOKEN,
        DATABASE_URL=database_url,
        discord_api_base=sim.api_base,
        discord_gateway_url=sim.gateway_url,
        guild_ready_timeout_s=0.1,
        stats_interval_s=0,
        **overrides,
    )


@contextlib.asynccontextmanager
async def running_worker(sim: Simulator, database_url: str, **overrides: Any) -> AsyncIterator[IngestWorker]:
    worker = IngestWorker(settings_for(sim, database_url, **overrides))
    await worker.start()
    try:
        yield worker
    finally:
        assert not worker.runner.done(), "the discord.py client stopped on its own"
        assert await worker.stop()


async def wait_equal(
    conn: asyncpg.Connection, sim: Simulator, timeout: float = 20.0, guilds: set[str] | None = None
) -> None:
    last: list[list[str]] = [[]]

    async def equal() -> bool:
        truth = truth_rows(sim.state())
        seen = await db_view(conn)
        if guilds is not None:
            truth = {k: v for k, v in truth.items() if k in guilds}
            seen = {k: v for k, v in seen.items() if k in guilds}
        last[0] = differences(truth, seen)
        return not last[0]

    try:
        await wait_for(equal, timeout=timeout, interval=0.1, message="rows equal to the simulator's truth")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; first differences: {last[0]}") from None


@pytest.fixture
async def feed(database_url: str) -> AsyncIterator[FeedRecorder]:
    recorder = await FeedRecorder().start(database_url)
    yield recorder
    await recorder.stop()


async def test_start_syncs_every_guild_including_ten_thousand_members(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with (
        Simulator(SimConfig(guild_sizes=[3, 50, 10_000], seed=1)) as sim,
        running_worker(sim, database_url) as worker,
    ):
        await wait_equal(conn, sim, timeout=60)
        names = dict(await conn.fetch("SELECT server_id, name FROM discord_servers"))
        assert names == {g["id"]: g["name"] for g in sim.state()["guilds"]}
        assert worker.writer.stats.full_syncs == 3
        bots = [m["user_id"] for g in sim.state()["guilds"] for m in g["members"] if m["bot"]]
        assert bots and not await conn.fetchval(
            "SELECT count(*) FROM discord_users WHERE user_id = ANY($1::text[])", bots
        )


async def test_each_live_event_changes_rows_and_is_announced(
    database_url: str, conn: asyncpg.Connection, feed: FeedRecorder
) -> None:
    async with Simulator(SimConfig(guilds=2, members=20, seed=2)) as sim, running_worker(sim, database_url):
        await wait_equal(conn, sim)
        state = sim.state()
        guild = state["guilds"][0]
        gid = int(guild["id"])
        humans = [m for m in guild["members"] if not m["bot"]]
        member = humans[0]
        uid = int(member["user_id"])

        async def next_event(kind: type, **match: str) -> Any:
            def found() -> Any:
                for event in feed.events:
                    if isinstance(event, kind) and all(getattr(event, k) == v for k, v in match.items()):
                        return event
                return None

            event = await wait_for(found, timeout=10, message=f"{kind.__name__} {match}")
            feed.events.clear()
            return event

        await wait_for(lambda: len(feed.of(UserUpserted)) == sum(len(g) for g in truth_rows(state).values()))
        feed.events.clear()
        # presence
        new_status = "dnd" if member["status"] != "dnd" else "idle"
        await sim.set_presence(gid, uid, new_status)
        event = await next_event(UserUpserted, user_id=str(uid))
        assert event.status == new_status
        # a presence update that changes nothing stored announces nothing (a later change is the marker)
        await sim.set_presence(gid, uid, new_status)
        other = humans[1]
        await sim.set_presence(gid, int(other["user_id"]), "dnd" if other["status"] != "dnd" else "idle")
        await wait_for(lambda: feed.of(UserUpserted), message="marker")
        assert [e.user_id for e in feed.of(UserUpserted)] == [other["user_id"]]  # type: ignore[union-attr]
        feed.events.clear()
        # join, nick, roles, leave
        joined = await sim.add_member(gid, username="newbie", status="online")
        event = await next_event(UserUpserted, user_id=joined["user_id"])
        assert (event.username, event.status) == (joined["display_name"], "online")
        await sim.update_member(gid, uid, nick="Renamed")
        assert (await next_event(UserUpserted, user_id=str(uid))).username == "Renamed"
        coloured = max(
            (r for r in guild["roles"] if r["color"] and r["id"] != guild["id"]), key=lambda r: r["position"]
        )
        await sim.update_member(gid, uid, roles=[int(coloured["id"])])
        assert (await next_event(UserUpserted, user_id=str(uid))).role_color == f"#{coloured['color']:06x}"
        await sim.remove_member(gid, int(joined["user_id"]))
        await next_event(UserDeleted, user_id=joined["user_id"])
        # role recolour: every member holding the role is re-derived
        await sim.set_role_color(gid, int(coloured["id"]), 0x123456)
        assert (await next_event(UserUpserted, user_id=str(uid))).role_color == "#123456"
        await wait_equal(conn, sim)
        # guild rename
        await sim.rename_guild(gid, "Renamed guild")
        await next_event(ServerChanged, server_id=str(gid))
        assert await conn.fetchval("SELECT name FROM discord_servers WHERE server_id = $1", str(gid)) == (
            "Renamed guild"
        )
        # chat
        channel = int(guild["channels"][0]["id"])
        await sim.send_message(gid, channel, uid, "hello\nworld")
        message = await next_event(ChatMessage, user_id=str(uid))
        assert (message.server_id, message.channel_id, message.text) == (
            str(gid),
            str(channel),
            "hello world",
        )
        # the bot leaves the guild
        await sim.remove_guild(gid)
        await wait_for(
            lambda: conn.fetchval(
                "SELECT departed_at IS NOT NULL FROM discord_servers WHERE server_id = $1", str(gid)
            ),
            message="departed_at set",
        )
        assert await conn.fetchval("SELECT count(*) FROM discord_users WHERE server_id = $1", str(gid)) == 0
        await wait_equal(conn, sim)


async def test_changes_while_stopped_are_caught_up_on_start(
    database_url: str, conn: asyncpg.Connection
) -> None:
    async with Simulator(SimConfig(guilds=2, members=30, seed=3)) as sim:
        async with running_worker(sim, database_url):
            await wait_equal(conn, sim)
        guild = sim.state()["guilds"][1]
        gid = int(guild["id"])
        humans = [m for m in guild["members"] if not m["bot"]]
        await sim.add_member(gid, username="late joiner")
        await sim.remove_member(gid, int(humans[0]["user_id"]))
        await sim.set_presence(
            gid, int(humans[1]["user_id"]), "dnd" if humans[1]["status"] != "dnd" else "idle"
        )
        role = next(r for r in guild["roles"] if r["color"] and r["id"] != guild["id"])
        await sim.set_role_color(gid, int(role["id"]), 0xABCDEF)
        assert differences(truth_rows(sim.state()), await db_view(conn))  # the rows are stale now
        async with running_worker(sim, database_url):
            await wait_equal(conn, sim)


async def test_full_sync_after_re_identify(database_url: str, conn: asyncpg.Connection) -> None:
    async with (
        Simulator(SimConfig(guilds=1, members=20, seed=4)) as sim,
        running_worker(sim, database_url) as worker,
    ):
        await wait_equal(conn, sim)
        # Drift the table behind the worker's back: only a full sync can repair it.
        await conn.execute(
            "DELETE FROM discord_users WHERE user_id IN (SELECT user_id FROM discord_users LIMIT 3)"
        )
        syncs = worker.writer.stats.full_syncs
        await sim.send_invalid_session(resumable=False)
        await wait_for(lambda: worker.writer.stats.full_syncs > syncs, timeout=20, message="a new full sync")
        await wait_equal(conn, sim)


async def test_postgres_restart_during_presence_storm(
    pg: PgServer, database_url: str, conn: asyncpg.Connection
) -> None:
    if pg.local is None:
        pytest.skip("needs the embedded PostgreSQL to restart it")
    async with (
        Simulator(SimConfig(guilds=2, members=300, seed=5, presence_rate=2000)) as sim,
        running_worker(sim, database_url) as worker,
    ):
        await wait_for(lambda: worker.writer.stats.rows_committed > 2000, timeout=30, message="storm")
        await conn.close()
        await asyncio.to_thread(pg.restart, 2.0)
        committed = worker.writer.stats.rows_committed
        await wait_for(
            lambda: worker.writer.stats.rows_committed > committed + 1000,
            timeout=30,
            message="writes after the restart",
        )
        sim.pause()
        fresh = await asyncpg.connect(database_url, timeout=10)
        try:
            await wait_equal(fresh, sim, timeout=30)
        finally:
            await fresh.close()
        assert worker.writer.stats.reconnects >= 1
        assert not worker.runner.done()


async def test_two_workers_split_the_shards(database_url: str, conn: asyncpg.Connection) -> None:
    async with Simulator(SimConfig(guilds=8, members=10, seed=6, recommended_shards=2)) as sim:
        by_shard: dict[int, set[str]] = {0: set(), 1: set()}
        for guild in sim.state()["guilds"]:
            by_shard[(int(guild["id"]) >> 22) % 2].add(guild["id"])
        assert by_shard[0] and by_shard[1], "the seed must put guilds on both shards"
        # A server of shard 1 that Discord no longer has: only shard 1's worker may mark it departed.
        ghost = str((1 << 22) * 1001)  # (id >> 22) % 2 == 1
        await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ($1, 'ghost')", ghost)
        async with running_worker(sim, database_url, shard_count=2, shard_ids=[0]) as first:
            await wait_equal(conn, sim, guilds=by_shard[0])
            assert set(first.client.server_ids()) == by_shard[0]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM discord_servers WHERE server_id = ANY($1::text[])",
                    list(by_shard[1]),
                )
                == 0
            )
            assert await conn.fetchval(
                "SELECT departed_at IS NULL FROM discord_servers WHERE server_id = $1", ghost
            )
            async with running_worker(sim, database_url, shard_count=2, shard_ids=[1]) as second:
                await wait_equal(conn, sim)
                assert set(second.client.server_ids()) == by_shard[1]
                await wait_for(
                    lambda: conn.fetchval(
                        "SELECT departed_at IS NOT NULL FROM discord_servers WHERE server_id = $1", ghost
                    ),
                    message="ghost departed by its shard's worker",
                )
                for guild in sim.state()["guilds"][:4]:
                    member = next(m for m in guild["members"] if not m["bot"])
                    await sim.set_presence(
                        int(guild["id"]),
                        int(member["user_id"]),
                        "dnd" if member["status"] != "dnd" else "idle",
                    )
                await wait_equal(conn, sim)
