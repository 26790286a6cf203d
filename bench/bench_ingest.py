"""Ingest benchmark: presence throughput against a bare discord.py client, latency, memory, full syncs.

Three parts, one run (``--quick``: shorter windows, no 1M step):

1. Throughput. The simulator runs in its own process (``dzone simulate``, one guild of ``--members``);
   the client under test (a bare discord.py client, then the ingest: discord.py + our parsers + the
   writer) runs in this process; PostgreSQL is ``DATABASE_URL`` or an embedded server. The simulator,
   the client and PostgreSQL compete for the same 2 cores, so a wall-clock rate mostly measures the
   simulator and the machine's load. The rates compared are therefore per CPU second of this process
   only: events parsed (bare) or committed (ingest) divided by this process's user+system CPU time over
   the same window, at the unbounded rate (the simulator sends as fast as the client reads). Wall-clock
   rates and CPU shares are printed next to them. ``committed`` counts events whose state reached a
   commit (coalesced events count: their latest state was committed).
2. Latency: p50/p99 event-to-commit (handler -> COMMIT returned) at offered rates (``--rates``).
3. Memory and full sync, each size in a fresh process (``--sizes``, default 10k, 100k and 1M = 10 guilds
   x 100k): pre-built gateway payloads (GUILD_CREATE with the online members and their presences, then
   GUILD_MEMBERS_CHUNK of 1000, encoded to JSON and decoded again as the gateway would) go through the
   ingest's own parser table, without a socket; then every guild is fully synced to a fresh database
   by the writer (one flush: the syncs run on ``DZONE_SYNC_CONNECTIONS`` connections at once).
   Printed: RSS before, after the members are cached, after the syncs, per member, and sync seconds.

``--profile`` adds a step at the unbounded rate under cProfile (top functions by own time; not in the
table, as the profiler doubles the CPU time).

Run: .venv/bin/python bench/bench_ingest.py [--quick] [--members 10000] [--seconds 8] [--rates 8000,0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import itertools
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
import types
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import discord
import discord.gateway
import psutil
from simulator_process import start_simulator

from ingest.worker import IngestWorker
from ingest.writer import percentile
from shared.db import migrate
from shared.settings import IngestSettings, load

SIM_TOKEN = "bench-token"


PG_PIDS: list[int] = []  # the embedded server's postmaster, when we started one (for its CPU figure)


def pg_cpu_seconds() -> float:
    """CPU seconds used so far by the embedded PostgreSQL (postmaster + backends); 0 when not ours."""
    total = 0.0
    for pid in PG_PIDS:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
    return total


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A server to create one migrated database per step on: DATABASE_URL's, or an embedded one."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    from dzone.localdb import LocalPostgres

    with LocalPostgres() as local:
        if local.pid is not None:
            PG_PIDS.append(local.pid)
        yield local.url


def pin_cores() -> str:
    """This process (the client under test) on CPU 0, the embedded PostgreSQL on CPU 1.

    New backends inherit the postmaster's affinity, so the bare client and the ingest each get core 0
    and PostgreSQL never takes it from them (other sessions on the machine still may).
    """
    os.sched_setaffinity(0, {0})
    pinned = 0
    for pid in PG_PIDS:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    process.cpu_affinity([1])
                    pinned += 1
    where = f"{pinned} PostgreSQL processes on CPU 1" if pinned else "PostgreSQL not ours: not pinned"
    return f"pinned (taskset-style): this process on CPU 0, {where}"


async def control(api_base: str, action: str) -> None:
    base = api_base.split("/api/")[0]
    async with aiohttp.ClientSession() as http, http.post(f"{base}/_sim/{action}", json={}) as response:
        response.raise_for_status()


def count_presence_parses(client: discord.Client, counter: list[int]) -> None:
    """Count PRESENCE_UPDATE inside discord.py's parser table (the full parse still runs)."""
    parsers = client._connection.parsers
    original = parsers["PRESENCE_UPDATE"]

    def counting(data: Any) -> None:
        counter[0] += 1
        original(data)

    parsers["PRESENCE_UPDATE"] = counting


async def run_bare(api_base: str, gateway_url: str, seconds: float, warmup: float) -> dict[str, float]:
    from ingest.gateway import ingest_intents
    from shared.discord_rules import point_discord_py

    point_discord_py(api_base, gateway_url)
    client = discord.Client(intents=ingest_intents(False), guild_ready_timeout=0.1, max_messages=None)
    ready = asyncio.Event()
    counter = [0]

    @client.event
    async def on_ready() -> None:
        count_presence_parses(client, counter)
        ready.set()

    runner = asyncio.create_task(client.start(SIM_TOKEN))
    try:
        await asyncio.wait_for(ready.wait(), 120)
        return await window(api_base, lambda: (counter[0], counter[0], 0), seconds, warmup)
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 10)


async def run_ingest(
    api_base: str, gateway_url: str, url: str, seconds: float, warmup: float, profile: bool
) -> tuple[dict[str, float], str]:
    settings = load(
        IngestSettings, DISCORD_BOT_TOKEN=SIM_TOKEN, DATABASE_URL=url, discord_api_base=api_base,
        discord_gateway_url=gateway_url, guild_ready_timeout_s=0.1, stats_interval_s=0, relay_messages=False,
    )  # fmt: skip
    worker = IngestWorker(settings)
    counter = [0]
    await worker.start()
    try:
        while worker.writer.stats.full_syncs < 1:  # noqa: ASYNC110 - polling a counter in a benchmark
            await asyncio.sleep(0.05)
        await worker.writer.wait_idle(60)
        count_presence_parses(worker.client, counter)
        stats = worker.writer.stats
        # "committed" events: those handed to the writer minus those still pending
        figures = await window(
            api_base,
            lambda: (counter[0], stats.events - worker.writer.pending_rows, stats.rows_committed, stats.batches),
            seconds, warmup, worker=worker, profile=profile,
        )  # fmt: skip
        return figures, figures.pop("profile_text", "")
    finally:
        await worker.stop()


async def window(
    api_base: str,
    sample: Any,
    seconds: float,
    warmup: float,
    worker: IngestWorker | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    me = psutil.Process()
    await control(api_base, "resume")
    await asyncio.sleep(warmup)
    if worker is not None:
        worker.writer.stats.event_latency.clear()
        worker.writer.stats.commit_latency.clear()
    before, cpu0, pg0, t0 = sample(), me.cpu_times(), pg_cpu_seconds(), time.perf_counter()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler:
        profiler.disable()
    after, cpu1, pg1, t1 = sample(), me.cpu_times(), pg_cpu_seconds(), time.perf_counter()
    await control(api_base, "pause")
    elapsed = t1 - t0
    figures: dict[str, Any] = {
        "received": (after[0] - before[0]) / elapsed,
        "committed": (after[1] - before[1]) / elapsed,
        "cpu": 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / elapsed,
        "pg_cpu": 100 * (pg1 - pg0) / elapsed,
    }
    if worker is not None:
        latencies = list(worker.writer.stats.event_latency)
        batches = after[3] - before[3]
        figures["rows"] = (after[2] - before[2]) / elapsed
        figures["batch"] = (after[2] - before[2]) / batches if batches else 0
        figures["p50_ms"] = percentile(latencies, 0.5) * 1000
        figures["p99_ms"] = percentile(latencies, 0.99) * 1000
        figures["commit_ms"] = percentile(worker.writer.stats.commit_latency, 0.5) * 1000
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        figures["profile_text"] = out.getvalue()
    return figures


async def new_database(url: str) -> str:
    """A new migrated database on ``url``'s server; returns its URL."""
    admin = await asyncpg.connect(url)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE template1")
    await admin.close()
    step_url = url.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(migrate, step_url)
    return step_url


BOT_ID = 1
CHUNK = 1000  # Discord's GUILD_MEMBERS_CHUNK size


def member_payload(guild_index: int, i: int) -> dict[str, Any]:
    """A member as Discord sends it: every name distinct, a nick for one in ten, 0-3 of the guild's roles."""
    user_id = 10**17 + guild_index * 10**7 + i
    return {
        "user": {
            "id": str(user_id), "username": f"member{guild_index}_{i}", "discriminator": "0",
            "global_name": f"Member {guild_index}/{i}" if i % 2 else None, "avatar": None, "bot": False,
            "public_flags": 0,
        },
        "nick": f"nick {i}" if i % 10 == 0 else None,
        "roles": [str(1000 + (i * 7 + k) % 20) for k in range(i % 4)],
        "joined_at": "2024-01-01T00:00:00+00:00", "premium_since": None, "deaf": False, "mute": False,
        "pending": False, "flags": 0, "avatar": None, "communication_disabled_until": None,
    }  # fmt: skip


def guild_create_payload(guild_index: int, guild_id: int, members: int) -> dict[str, Any]:
    """GUILD_CREATE of a large guild: roles, a few channels, the bot and the online third of the members."""
    online = [member_payload(guild_index, i) for i in range(0, members, 3)]
    bot = member_payload(guild_index, 0)
    bot["user"] = {**bot["user"], "id": str(BOT_ID), "username": "bot", "bot": True}
    return {
        "id": str(guild_id), "name": f"bench guild {guild_index}", "owner_id": str(BOT_ID), "large": True,
        "member_count": members + 1, "unavailable": False, "features": [], "emojis": [], "stickers": [],
        "roles": [{"id": str(guild_id), "name": "@everyone", "color": 0, "position": 0, "permissions": "1024"}]
        + [{"id": str(1000 + r), "name": f"role {r}", "color": (r * 0x0F0F0F) & 0xFFFFFF, "position": r + 1,
            "permissions": "0"} for r in range(20)],
        "channels": [{"id": str(guild_id + c), "type": 0, "name": f"channel-{c}", "position": c,
                      "permission_overwrites": []} for c in range(1, 6)],
        "threads": [], "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
        "members": [bot, *online],
        "presences": [{"user": {"id": m["user"]["id"]}, "status": "online", "activities": [],
                       "client_status": {"desktop": "online"}} for m in online],
    }  # fmt: skip


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def memory_child(url: str, guilds: int, members: int) -> dict[str, Any]:
    """Cache ``guilds`` x ``members`` through the ingest's parsers, then fully sync every guild."""
    import orjson

    from ingest.gateway import IngestClient
    from ingest.writer import Writer, WriterConfig

    client = IngestClient(
        include_bots=False, relay_messages=False, shard_count=1, shard_ids=None, guild_ready_timeout=0.1
    )
    state: Any = client._connection
    state._add_ready_state = lambda _guild: True  # as before the last GUILD_CREATE: no chunk request sent
    state.user = types.SimpleNamespace(id=BOT_ID)  # READY would set the bot user
    parsers = state.parsers
    writer = Writer(url, client, WriterConfig(stats_interval_s=0, heartbeat_interval_s=0))
    client.writer = writer
    baseline = rss()
    started = time.perf_counter()
    guild_ids = [(1 << 40) * (g + 1) for g in range(guilds)]
    for g, guild_id in enumerate(guild_ids):
        parsers["GUILD_CREATE"](orjson.loads(orjson.dumps(guild_create_payload(g, guild_id, members))))
        count = -(-members // CHUNK)
        for index in range(count):
            batch = [member_payload(g, i) for i in range(index * CHUNK, min(members, (index + 1) * CHUNK))]
            frame = {"guild_id": str(guild_id), "members": batch, "chunk_index": index, "chunk_count": count}
            parsers["GUILD_MEMBERS_CHUNK"](orjson.loads(orjson.dumps(frame)))
    parse_s = time.perf_counter() - started
    cached = rss()
    cached_members = sum(len(table) for table in client.members.values())
    writer.start()
    try:
        sync_s = await sync_all(writer, guild_ids)
        for table in client.members.values():  # as after a re-IDENTIFY: 2 % of the members changed
            for user_id in itertools.islice(table.members, 0, None, 50):
                table.members[user_id].status = "dnd"
        resync_s = await sync_all(writer, guild_ids)
    finally:
        await writer.close()
    assert writer.stats.full_syncs == 2 * guilds, writer.stats
    return {
        "members": cached_members,
        "baseline_mib": baseline / 2**20,
        "cached_mib": cached / 2**20,
        "after_sync_mib": rss() / 2**20,
        "per_member_kib": (cached - baseline) / cached_members / 1024,
        "parse_s": parse_s,
        "sync_s": sync_s,
        "resync_s": resync_s,
    }


async def sync_all(writer: Any, guild_ids: list[int]) -> float:
    """Seconds to fully sync every guild (snapshot, COPY, diff when rows exist), as the writer does:
    on ``sync_connections`` connections at once."""
    started = time.perf_counter()
    for guild_id in guild_ids:
        writer.sync_guild(str(guild_id))
    await writer.wait_idle(600)
    return time.perf_counter() - started


def run_memory_child(url: str, guilds: int, members: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--memory-child", f"{guilds}x{members}", "--child-database", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"memory step {guilds}x{members} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# RELAY_MESSAGES before channel privacy (server check only): the reference for the cost of the channel rule.
_RELAY_WITHOUT_CHANNEL_RULE = """
SELECT dzone_notify_message(m.server_id, m.user_id, m.channel_id, m.message_id, m.text)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
     AS m(server_id, user_id, channel_id, message_id, text, ord)
JOIN discord_servers s ON s.server_id = m.server_id AND s.relay_messages
ORDER BY m.ord
"""


async def bench_relay(url: str, batch: int = 2000, rounds: int = 20) -> None:
    """Time one chat batch through RELAY_MESSAGES with and without the channel rule (500 channels)."""
    from ingest import queries

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ('1', 'bench guild')")
        await conn.executemany(
            "INSERT INTO discord_channels (server_id, channel_id, name, public) VALUES ('1', $1, $2, $3)",
            [(str(100 + c), f"channel {c}", c % 10 != 0) for c in range(500)],
        )
        columns = [
            ["1"] * batch,
            [str(10_000 + i % 300) for i in range(batch)],
            [str(100 + i % 500) for i in range(batch)],
            [str(1_000_000 + i) for i in range(batch)],
            [f"chat line {i} with some words in it" for i in range(batch)],
        ]
        for label, statement in (
            ("server rule only (before)", _RELAY_WITHOUT_CHANNEL_RULE),
            ("server + channel rule", queries.RELAY_MESSAGES),
        ):
            timings = []
            for _ in range(rounds):
                started = time.perf_counter()
                await conn.execute(statement, *columns)
                timings.append(time.perf_counter() - started)
            timings.sort()
            print(f"relay of {batch} messages, {label}: p50 {timings[len(timings) // 2] * 1000:.1f} ms, "
                  f"min {timings[0] * 1000:.1f} ms")  # fmt: skip
    finally:
        await conn.close()


def per_cpu_second(figures: dict[str, Any], key: str) -> float:
    """Events per second of this process's CPU time (the rate it would reach on a core of its own)."""
    return float(figures[key]) / max(float(figures["cpu"]) / 100, 1e-9)


async def bench_throughput(url: str, args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    print(f"\n1 guild of {args.members} members, {args.seconds:.0f} s per step (+{args.warmup:.0f} s warm-up); "
          "rates per CPU second of this process (see the docstring)")  # fmt: skip
    header = (
        f"{'step':>22} {'received/s':>11} {'committed/s':>12} {'per cpu s':>10} {'rows/s':>8} {'batch':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'cpu %':>6} {'pg cpu %':>9} {'commit p50 ms':>14}"
    )
    sim, api_base, gateway_url = start_simulator(args.members, 0)
    try:
        bare = await run_bare(api_base, gateway_url, args.seconds, args.warmup)
    finally:
        sim.terminate()
        sim.wait(10)
    ceiling = per_cpu_second(bare, "received")
    print(header)
    print(f"{'bare discord.py (ceil)':>22} {bare['received']:>11.0f} {'-':>12} {ceiling:>10.0f} {'-':>8} {'-':>6} "
          f"{'-':>7} {'-':>7} {bare['cpu']:>6.0f}")  # fmt: skip
    profile_text = ""
    steps = [(rate, False) for rate in rates]
    for rate, profiled in steps:
        step_url = await new_database(url)
        sim, api_base, gateway_url = start_simulator(args.members, rate)
        try:
            figures, text = await run_ingest(
                api_base, gateway_url, step_url, args.seconds, args.warmup, profiled
            )
        finally:
            sim.terminate()
            sim.wait(10)
        if profiled:  # cProfile doubles the CPU time: a separate step, not in the table
            profile_text = text
            continue
        label = "unbounded" if rate == 0 else f"offered {rate:.0f}/s"
        print(f"{'ingest ' + label:>22} {figures['received']:>11.0f} {figures['committed']:>12.0f} "
              f"{per_cpu_second(figures, 'committed'):>10.0f} {figures['rows']:>8.0f} {figures['batch']:>6.0f} "
              f"{figures['p50_ms']:>7.1f} {figures['p99_ms']:>7.1f} {figures['cpu']:>6.0f} "
              f"{figures['pg_cpu']:>9.0f} {figures['commit_ms']:>14.1f}")  # fmt: skip
        if rate == 0:
            ratio = per_cpu_second(figures, "committed") / ceiling
            print(f"{'':>22} unbounded ingest: committed per CPU second = {ratio:.2f}x the bare discord.py "
                  f"parse rate (wall clock: {figures['committed'] / bare['received']:.2f}x)")  # fmt: skip
    if profile_text:
        print(profile_text)


REPLAY_MEMBERS = 10_000
REPLAY_GUILD = 1 << 41
STATUSES = ("online", "idle", "dnd", "offline")


def recorded_frames(count: int, members: int, seed: int = 7) -> list[bytes]:
    """PRESENCE_UPDATE frames as Discord sends them (one zlib stream, a sync flush per frame); every
    one changes its member's status, half carry an activity."""
    import orjson

    rng = random.Random(seed)
    compressor = zlib.compressobj()
    current = dict.fromkeys(range(members), "offline")
    frames = []
    for seq in range(1, count + 1):
        index = rng.randrange(members)
        status = rng.choice([s for s in STATUSES if s != current[index]])
        current[index] = status
        activities = [{"name": "a game", "type": 0, "created_at": 1700000000000}] if seq % 2 else []
        data = {
            "user": {"id": str(10**17 + index)}, "guild_id": str(REPLAY_GUILD), "status": status,
            "activities": activities, "client_status": {} if status == "offline" else {"desktop": status},
        }  # fmt: skip
        raw = orjson.dumps({"op": 0, "s": seq, "t": "PRESENCE_UPDATE", "d": data})
        frames.append(compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH))
    return frames


def offline_websocket(client: discord.Client, members: int) -> discord.gateway.DiscordWebSocket:
    """discord.py's gateway reader without a socket, its client holding one guild of ``members``."""
    import orjson

    state: Any = client._connection
    state.user = types.SimpleNamespace(id=BOT_ID)  # READY would set the bot user
    state._add_ready_state = lambda _guild: True  # no chunk request
    guild = guild_create_payload(0, REPLAY_GUILD, members)
    guild["members"] = [member_payload(0, i) for i in range(members)]  # a small guild: all of them
    guild["large"] = False
    state.parsers["GUILD_CREATE"](orjson.loads(orjson.dumps(guild)))
    ws = discord.gateway.DiscordWebSocket(None, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    ws._connection = state
    ws._discord_parsers = state.parsers
    ws._dispatch = client.dispatch
    ws.shard_id = 0
    return ws


async def replay(ws: discord.gateway.DiscordWebSocket, frames: list[bytes], rate: float) -> None:
    """Feed ``frames`` to discord.py's reader: as fast as it takes them (``rate`` 0) or ``rate``/s."""
    if not rate:
        for frame in frames:
            await ws.received_message(frame)
        return
    tick, started = 0.005, time.perf_counter()
    per_tick = max(1, round(rate * tick))
    for start in range(0, len(frames), per_tick):
        for frame in frames[start : start + per_tick]:
            await ws.received_message(frame)
        due = started + (start // per_tick + 1) * tick
        await asyncio.sleep(max(0.0, due - time.perf_counter()))


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def replay_bare(frames: list[bytes]) -> dict[str, float]:
    from ingest.gateway import ingest_intents

    client = discord.Client(intents=ingest_intents(False), max_messages=None)
    ws = offline_websocket(client, REPLAY_MEMBERS)
    cpu, started = cpu_seconds(), time.perf_counter()
    await replay(ws, frames, 0)
    elapsed = time.perf_counter() - started
    return {"rate": len(frames) / elapsed, "us_per_event": 1e6 * (cpu_seconds() - cpu) / len(frames)}


async def replay_ingest(url: str, frames: list[bytes], rate: float, profile: bool = False) -> dict[str, Any]:
    from ingest.fairness import install_cooperative_yield
    from ingest.gateway import IngestClient
    from ingest.writer import Writer, WriterConfig

    install_cooperative_yield()  # as the worker does: the writer gets the loop every 5 ms
    client = IngestClient(
        include_bots=False, relay_messages=False, shard_count=1, shard_ids=None, guild_ready_timeout=0.1
    )
    writer = Writer(url, client, WriterConfig(stats_interval_s=0, heartbeat_interval_s=0))
    client.writer = writer
    ws = offline_websocket(client, REPLAY_MEMBERS)
    writer.start()
    try:
        writer.sync_guild(str(REPLAY_GUILD))
        await writer.wait_idle(60)
        stats = writer.stats
        events0, committed0, batches0 = stats.events, stats.rows_committed, stats.batches
        stats.event_latency.clear()
        profiler = cProfile.Profile() if profile else None
        cpu, pg, started = cpu_seconds(), pg_cpu_seconds(), time.perf_counter()
        if profiler:
            profiler.enable()
        await replay(ws, frames, rate)
        handed_over = time.perf_counter()
        await writer.wait_idle(120)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        latencies = list(stats.event_latency)
        figures: dict[str, Any] = {
            "events": stats.events - events0,
            "rate": len(frames) / elapsed,  # every frame's state is committed by the end
            "us_per_event": 1e6 * (cpu_seconds() - cpu) / len(frames),
            "pg_cpu": 100 * (pg_cpu_seconds() - pg) / elapsed,
            "rows": stats.rows_committed - committed0,
            "batch": (stats.rows_committed - committed0) / max(stats.batches - batches0, 1),
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "drain_ms": (time.perf_counter() - handed_over) * 1000,  # last frame -> everything committed
        }
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
            figures["profile_text"] = out.getvalue()
        return figures
    finally:
        await writer.close()


async def bench_replay(url: str, args: argparse.Namespace) -> None:
    count = args.events
    frames = recorded_frames(count, REPLAY_MEMBERS)
    print(f"\nreplayed gateway frames: {count} PRESENCE_UPDATE (every one a status change) over 1 guild of "
          f"{REPLAY_MEMBERS} members, fed to discord.py's reader in this process: no simulator competes "
          "for the cores, PostgreSQL (pg cpu %) does, as in production")  # fmt: skip
    print(f"bare and ingest alternate for {args.rounds} rounds, so both see the same background load; "
          "the ratio is the median of the rounds' ratios")  # fmt: skip
    print(f"{'step':>24} {'events/s':>9} {'cpu us/event':>13} {'rows':>7} {'batch':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'pg cpu %':>9}")  # fmt: skip
    wall_ratios, cpu_ratios, drains = [], [], []
    for round_index in range(1, args.rounds + 1):
        bare = await replay_bare(frames)
        print(
            f"{f'{round_index}: bare discord.py parse':>24} {bare['rate']:>9.0f} {bare['us_per_event']:>13.1f}"
        )
        step = await replay_ingest(await new_database(url), frames, 0)
        print_replay_step(f"{round_index}: ingest committed", step)
        wall_ratios.append(step["rate"] / bare["rate"])
        drains.append(step["drain_ms"])
        cpu_ratios.append(bare["us_per_event"] / step["us_per_event"])
    print(f"{'':>24} sustained committed rate = {statistics.median(wall_ratios):.2f}x the bare discord.py "
          f"parse rate (rounds: {', '.join(f'{r:.2f}' for r in wall_ratios)}); per CPU second "
          f"{statistics.median(cpu_ratios):.2f}x")  # fmt: skip
    print(f"{'':>24} the ingest's time includes the drain after the last frame (the backlog's commits): "
          f"{', '.join(f'{d:.0f}' for d in drains)} ms")  # fmt: skip
    for rate in [float(r) for r in args.rates.split(",") if float(r)]:
        step = await replay_ingest(await new_database(url), frames[: int(rate * 10)], rate)
        print_replay_step(f"ingest at {rate:.0f}/s", step)
    if args.profile:
        step = await replay_ingest(await new_database(url), frames, 0, profile=True)
        print(step["profile_text"])


def print_replay_step(label: str, step: dict[str, Any]) -> None:
    print(f"{label:>24} {step['rate']:>9.0f} {step['us_per_event']:>13.1f} {step['rows']:>7} "
          f"{step['batch']:>6.0f} {step['p50_ms']:>7.1f} {step['p99_ms']:>7.1f} {step['pg_cpu']:>9.0f}")  # fmt: skip


def parse_size(text: str) -> tuple[int, int]:
    """``10000`` (one guild) or ``10x100000`` (guilds x members)."""
    guilds, _, members = text.rpartition("x")
    return int(guilds or 1), int(members)


async def bench_memory(url: str, sizes: list[tuple[int, int]]) -> None:
    print(
        "\nmembers cached through the parsers (one fresh process per size), then a full sync of every guild"
    )
    print(f"{'size':>12} {'members':>9} {'base MiB':>9} {'cached MiB':>11} {'KiB/member':>11} {'after sync MiB':>15} "
          f"{'parse s':>8} {'full sync s':>12} {'re-sync 2 % s':>14}")  # fmt: skip
    for guilds, members in sizes:
        step = run_memory_child(await new_database(url), guilds, members)
        print(f"{f'{guilds}x{members}':>12} {step['members']:>9} {step['baseline_mib']:>9.0f} {step['cached_mib']:>11.0f} "
              f"{step['per_member_kib']:>11.3f} {step['after_sync_mib']:>15.0f} {step['parse_s']:>8.2f} "
              f"{step['sync_s']:>12.2f} {step['resync_s']:>14.2f}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 s windows, sizes 10k and 100k only")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rates", default="8000,0", help="offered presence/s; 0 = unbounded")
    parser.add_argument("--sizes", default="10000,100000,10x100000", help="memory steps: members or GxM")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest at the unbounded rate")
    parser.add_argument("--relay", action="store_true", help="also the chat relay statement benchmark")
    parser.add_argument(
        "--events",
        type=int,
        default=400_000,
        help="replayed presence frames (the drain at the end amortised)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="this process on CPU 0, the embedded PostgreSQL on CPU 1"
    )
    parser.add_argument("--rounds", type=int, default=3, help="bare/ingest rounds at the unbounded rate")
    parser.add_argument(
        "--network",
        action="store_true",
        help="also through the simulator's gateway (wall clock, shared cores)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--child-database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        guilds, members = parse_size(args.memory_child)
        print(json.dumps(await memory_child(args.child_database, guilds, members)))
        return
    if args.quick:
        args.seconds, args.warmup, args.sizes, args.events, args.rounds = 4.0, 1.0, "10000,100000", 60_000, 1
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, uvloop: no")
    with database() as url:
        if args.pin:
            print(pin_cores())
        if args.relay:
            await bench_relay(await new_database(url))
        await bench_replay(url, args)
        if args.network:
            await bench_throughput(url, args)
        if args.sizes:
            await bench_memory(url, [parse_size(size) for size in args.sizes.split(",")])
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    from shared.logs import configure

    configure("warning")
    asyncio.run(main())
