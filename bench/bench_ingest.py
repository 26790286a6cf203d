"""Ingest throughput: sustained presence events/s committed to PostgreSQL, vs a bare discord.py client.

The simulator runs in its own process (``dzone simulate``, one guild); the ingest (discord.py + the
writer) runs in this process; PostgreSQL is ``DATABASE_URL`` or an embedded server. For each offered
presence rate (``--rates``; 0 = unbounded, i.e. as fast as the client reads: the simulator waits on
backpressure) the script prints:

* received/s: PRESENCE_UPDATE dispatches discord.py parsed; committed/s: of those, the events whose
  state reached a commit (coalesced events count: their latest state was committed);
* rows/s and the mean batch size after coalescing; p50/p99 event-to-commit latency (handler -> COMMIT);
* CPU of this process and of the embedded PostgreSQL (one core = 100 %).

The first line is the ceiling: a bare discord.py client parsing the same stream, no database.
``--profile`` adds a cProfile of the ingest at the unbounded rate (top functions by own time).

Run: .venv/bin/python bench/bench_ingest.py [--members 10000] [--seconds 8] [--rates 4000,8000,12000,0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import discord
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


class _ListSource:
    """A GuildSource over a prepared list of rows (the full-sync benchmark needs no gateway)."""

    def __init__(self, server_id: str, rows: list[Any]) -> None:
        self.server_id, self.rows = server_id, rows

    def snapshot(self, server_id: str) -> Any:
        from ingest.writer import GuildSnapshot

        return GuildSnapshot("bench guild", self.rows)

    def server_ids(self) -> list[str]:
        return [self.server_id]

    def owns(self, server_id: str) -> bool:
        return True

    def channels(self, server_id: str) -> list[Any]:
        return []  # the benchmark measures member rows only


async def bench_full_sync(url: str, members: int) -> None:
    """Time a first full sync (all inserts, bulk mode) and a re-sync with 1 % changed and 1 % departed."""
    from ingest.mapping import MemberRow
    from ingest.writer import Writer, WriterConfig

    rows = [MemberRow("1", str(10_000 + i), f"member {i}", "online", "#99aab5") for i in range(members)]
    source = _ListSource("1", rows)
    writer = Writer(url, source, WriterConfig(stats_interval_s=0))
    writer.start()
    try:
        for label in ("first sync", "re-sync, 2 % changed"):
            started = time.perf_counter()
            writer.sync_guild("1")
            await writer.wait_idle(60)
            print(f"full sync of {members} members, {label}: {time.perf_counter() - started:.2f} s")
            step = max(1, members // 100)
            source.rows = [r._replace(status="idle") if i % step == 0 else r for i, r in enumerate(rows)
                           if i % step != 1]  # fmt: skip
    finally:
        await writer.close()


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


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--rates", default="4000,8000,12000,16000,0", help="offered presence/s; 0 = unbounded"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest at the unbounded rate")
    parser.add_argument("--sync-members", type=int, default=100_000, help="size of the full-sync benchmark")
    parser.add_argument("--relay-only", action="store_true", help="only the chat relay statement benchmark")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"1 guild of {args.members} members, {os.cpu_count()} cores, {args.seconds:.0f} s per step "
          f"(+{args.warmup:.0f} s warm-up), uvloop: no")  # fmt: skip
    header = (
        f"{'step':>22} {'received/s':>11} {'committed/s':>12} {'rows/s':>8} {'batch':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'cpu %':>6} {'pg cpu %':>9} {'commit p50 ms':>14}"
    )
    with database() as url:
        await bench_relay(await new_database(url))
        if args.relay_only:
            return
        sync_url = await new_database(url)
        await bench_full_sync(sync_url, args.sync_members)
        sim, api_base, gateway_url = start_simulator(args.members, 0)
        try:
            bare = await run_bare(api_base, gateway_url, args.seconds, args.warmup)
        finally:
            sim.terminate()
            sim.wait(10)
        print(header)
        print(f"{'bare discord.py (ceil)':>22} {bare['received']:>11.0f} {'-':>12} {'-':>8} {'-':>6} {'-':>7} {'-':>7} "
              f"{bare['cpu']:>6.0f}")  # fmt: skip
        profile_text = ""
        for rate in rates:
            step_url = await new_database(url)
            sim, api_base, gateway_url = start_simulator(args.members, rate)
            try:
                figures, text = await run_ingest(
                    api_base, gateway_url, step_url, args.seconds, args.warmup, args.profile and rate == 0
                )
            finally:
                sim.terminate()
                sim.wait(10)
            profile_text = text or profile_text
            label = "unbounded" if rate == 0 else f"offered {rate:.0f}/s"
            print(f"{'ingest ' + label:>22} {figures['received']:>11.0f} {figures['committed']:>12.0f} "
                  f"{figures['rows']:>8.0f} {figures['batch']:>6.0f} {figures['p50_ms']:>7.1f} "
                  f"{figures['p99_ms']:>7.1f} {figures['cpu']:>6.0f} {figures['pg_cpu']:>9.0f} {figures['commit_ms']:>14.1f}")  # fmt: skip
            if rate == 0:
                print(f"{'':>22} unbounded ingest = {100 * figures['committed'] / bare['received']:.0f} % of the "
                      "bare discord.py ceiling")  # fmt: skip
        if profile_text:
            print(profile_text)


if __name__ == "__main__":
    from shared.logs import configure

    configure("warning")
    asyncio.run(main())
