"""How many presence events per second the simulator pushes to one connected client.

The simulator runs in its own process (``dzone simulate``) with an unbounded presence rate, so the
scenario is limited only by backpressure; the client runs here. Two clients are measured:

* ``discord.py``: a real discord.py Client (zlib-stream, full parse into its member cache): what the
  ingest sees. discord.py's parse is the expected ceiling (~16k/s on this machine).
* ``raw``: an aiohttp WebSocket that only inflates and JSON-decodes each frame: the simulator's own
  ceiling, i.e. how far above discord.py's ceiling the simulator is.

Run: .venv/bin/python bench/bench_simulator.py [--seconds 10] [--members 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import zlib
from typing import Any

import aiohttp
import orjson
import psutil
from simulator_process import start_simulator

SIM_TOKEN = "bench-token"


async def control(http: aiohttp.ClientSession, api_base: str, action: str) -> None:
    url = api_base.removesuffix("/api/v10") + f"/_sim/{action}"
    async with http.post(url) as response:
        response.raise_for_status()


async def measure(
    counter: list[int], seconds: float, sim: psutil.Process, http: aiohttp.ClientSession, api_base: str
) -> dict[str, float]:
    """Resume the scenario, skip a 1 s warm-up, count events for ``seconds``, pause again."""
    me = psutil.Process()
    await control(http, api_base, "resume")
    await asyncio.sleep(1.0)
    start_count, start = counter[0], time.perf_counter()
    sim.cpu_percent()
    me.cpu_percent()
    await asyncio.sleep(seconds)
    count, elapsed = counter[0] - start_count, time.perf_counter() - start
    figures = {
        "events_per_s": count / elapsed,
        "sim_cpu_pct": sim.cpu_percent(),
        "client_cpu_pct": me.cpu_percent(),
    }
    await control(http, api_base, "pause")
    return figures


async def bench_discord_py(
    api_base: str, gateway_url: str, seconds: float, sim: psutil.Process
) -> dict[str, float]:
    import discord

    from shared.discord_rules import point_discord_py

    point_discord_py(api_base, gateway_url)
    intents = discord.Intents.default()
    intents.members = True
    intents.presences = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.1)
    counter = [0]
    ready = asyncio.Event()

    async def on_ready() -> None:
        # count inside discord.py's own parser: the full parse, without a task per event for a listener
        parse = client._connection.parsers["PRESENCE_UPDATE"]

        def counting_parse(data: Any) -> None:
            counter[0] += 1
            parse(data)

        client._connection.parsers["PRESENCE_UPDATE"] = counting_parse
        ready.set()

    client.event(on_ready)
    runner = asyncio.create_task(client.start(SIM_TOKEN))
    await asyncio.wait_for(ready.wait(), 60)
    async with aiohttp.ClientSession() as http:
        figures = await measure(counter, seconds, sim, http, api_base)
    await client.close()
    await runner
    return figures


async def bench_raw(api_base: str, gateway_url: str, seconds: float, sim: psutil.Process) -> dict[str, float]:
    counter = [0]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gateway_url}?v=10&encoding=json&compress=zlib-stream", max_msg_size=0)
        inflator = zlib.decompressobj()

        async def send(op: int, data: Any) -> None:
            await ws.send_str(orjson.dumps({"op": op, "d": data}).decode())

        async def read() -> None:
            async for message in ws:
                payload = orjson.loads(inflator.decompress(message.data))
                if payload.get("t") == "PRESENCE_UPDATE":
                    counter[0] += 1

        reader = asyncio.create_task(read())
        await send(2, {"token": SIM_TOKEN, "intents": (1 << 0) | (1 << 1) | (1 << 8), "properties": {}})
        figures = await measure(counter, seconds, sim, http, api_base)
        reader.cancel()
        await ws.close()
    return figures


def bench_ceiling(members: int, events: int = 40_000) -> float:
    """The simulator's own cost per event with no socket: draw, apply, frame and zlib-encode (one core)."""
    from simulator.config import SimConfig
    from simulator.gateway import Connection, Session
    from simulator.server import Simulator

    sim = Simulator(SimConfig(guild_sizes=[members], presence_rate=1e9, start_paused=True))
    session = Session(
        shard_id=0, shard_count=1, intents=(1 << 1) | (1 << 8), large_threshold=250, replay_limit=10
    )
    connection = Connection.__new__(Connection)  # only its queue and zlib stream are used here
    connection.queue, connection.closing, connection.high_water = (
        __import__("collections").deque(),
        False,
        1 << 30,
    )
    connection._zlib = zlib.compressobj()
    connection._wake, connection.drained = asyncio.Event(), asyncio.Event()
    session.connection = connection
    sim.hub.sessions[session.id] = session
    started = time.perf_counter()
    done = 0
    while done < events:
        for change in sim.traffic.tick(2_000 / 1e9):
            sim._apply(change)
            done += 1
        while connection.queue:
            connection.encode(connection.queue.popleft())
    return done / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--members", type=int, default=10_000)
    args = parser.parse_args()
    process, api_base, gateway_url = start_simulator(args.members)
    try:
        sim = psutil.Process(process.pid)
        print(
            f"simulator: 1 guild of {args.members} members, {os.cpu_count()} cores, {args.seconds:.0f} s per run"
        )
        ceiling = bench_ceiling(args.members)
        print(
            f"{'no-socket':>10} ceiling: {ceiling:>9,.0f} presence events/s (draw + apply + zlib, one core)"
        )
        for name, bench in (("discord.py", bench_discord_py), ("raw", bench_raw)):
            figures = await bench(api_base, gateway_url, args.seconds, sim)
            print(
                f"{name:>10} client: {figures['events_per_s']:>9,.0f} presence events/s   "
                f"simulator CPU {figures['sim_cpu_pct']:5.1f}%   client CPU {figures['client_cpu_pct']:5.1f}%"
            )
    finally:
        process.terminate()
        process.wait(timeout=15)


if __name__ == "__main__":
    asyncio.run(main())
