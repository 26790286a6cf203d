"""Benchmarks of ``dzone serve`` (they print figures; they are not tests).

    .venv/bin/python bench/bench_serve.py fanout [--viewers 1000 5000] [--bursts 1 10 100] [--steady 100000] [--tls]
    .venv/bin/python bench/bench_serve.py join [--sizes 10 1000 10000]
    .venv/bin/python bench/bench_serve.py memory [--viewers 5000]

Each run starts an embedded PostgreSQL (or uses DATABASE_URL's server to create a scratch database),
runs the serve in its own process (its own core) and the viewers in this one, as raw WebSocket clients
that parse frame headers only (a full client per viewer would measure the client, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import resource
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson

SERVER_KEY = "100000000000000001"
FANOUT_MEMBERS = 100  # a burst of 100 changes renames every member once
# Every fan-out event has this shape and size (fixed-width ids and names, status stays "online"),
# which lets most viewers count bytes instead of parsing frames.
SAMPLE_FRAME = orjson.dumps(
    {
        "type": "presence",
        "server": SERVER_KEY,
        "data": {"uid": f"2{0:017d}", "status": "online", "username": "s000000000", "roleColor": "#336699"},
    }
)
FRAME_LEN = len(SAMPLE_FRAME) + (2 if len(SAMPLE_FRAME) < 126 else 4)


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- the server process


def server_process(url: str, pipe: Any, overrides: dict[str, Any]) -> None:
    """Run the serve; answer commands on ``pipe``: ("ceiling", frames) -> elapsed s, ("stop",)."""
    raise_fd_limit()
    from websockets.asyncio.server import broadcast

    from serve import WebSocketServer
    from shared.settings import ServeSettings

    async def main() -> None:
        values: dict[str, Any] = {
            "database_url": url,
            "host": "127.0.0.1",
            "port": 0,
            "max_connections": 100_000,
            "max_connections_per_ip": 100_000,
            "connects_per_minute": 1_000_000,
            "ping_interval_s": 600,
            "ping_timeout_s": 600,
            "snapshot_max_users": 20_000,
            "write_buffer_bytes": 4 * 1024 * 1024,
            "log_level": "warning",
        }
        values.update(overrides)
        server = WebSocketServer(port=0, host="127.0.0.1", settings=ServeSettings(**values))
        await server.open()
        pipe.send(("port", server.port, os.getpid()))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command[0] == "stop":
                break
            if command[0] == "coalesce":  # the serve's own switch: coalesced or per-frame broadcast()
                server._hub.fanout.coalesce = command[1]  # type: ignore[union-attr]
                pipe.send(("coalesce", command[1]))
            if command[0] == "ceiling":
                frames: list[bytes] = command[1]
                viewers = list(server._hub.viewers_of(SERVER_KEY))  # type: ignore[union-attr]
                started = time.perf_counter()
                for frame in frames:
                    broadcast(viewers, frame, text=True)
                    await asyncio.sleep(0)  # let the transports flush, as between notifications
                pipe.send(("ceiling", time.perf_counter() - started, len(viewers)))
        await server.close()

    asyncio.run(main())


@contextlib.contextmanager
def serve_process(url: str, **overrides: Any) -> Iterator[tuple[int, int, Any]]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=server_process, args=(url, child, overrides), daemon=True)
    proc.start()
    _tag, port, pid = parent.recv()
    try:
        yield port, pid, parent
    finally:
        parent.send(("stop",))
        proc.join(20)
        if proc.is_alive():
            proc.kill()


# ---------------------------------------------------------------- raw viewers


class RawViewer(asyncio.Protocol):
    """A WebSocket viewer that counts frames by their headers; ``decode`` ones also keep the payloads."""

    def __init__(self, decode: bool = False) -> None:
        self.buffer = bytearray()
        self.handshaken = False
        self.frames = 0
        self.decode = decode
        self.payloads: list[tuple[float, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.listed = asyncio.get_running_loop().create_future()  # the server-list arrived
        self.waiter: asyncio.Future[bytes] | None = None
        self.counting = False
        self.nbytes = 0
        self.events = 0  # parsed event frames since the join (decoding viewers)

    def delivered(self, frame_len: int) -> int:
        return self.nbytes // frame_len if self.counting else self.events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.counting:  # after the join, a counting viewer only adds up bytes (frames have one size)
            self.nbytes += len(data)
            return
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.buffer[: end + 4]
            self.handshaken = True
            self.opened.set_result(None)
        buf = self.buffer
        pos = 0
        now = time.perf_counter()
        while len(buf) - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if len(buf) - pos < head + length:
                break
            self.frames += 1
            if not self.listed.done():
                self.listed.set_result(None)
                pos += head + length
                continue
            if self.decode or self.waiter is not None:
                payload = bytes(buf[pos + head : pos + head + length])
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(payload)
                elif self.decode:
                    self.payloads.append((now, payload))
                    self.events += 1
            pos += head + length
        del buf[:pos]

    def send_text(self, text: bytes) -> None:
        assert self.transport is not None
        mask = b"\x00\x00\x00\x00"
        n = len(text)
        header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        self.transport.write(header + mask + text)

    async def request(self, text: bytes) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.send_text(text)
        try:
            return await self.waiter
        finally:
            self.waiter = None


def _factory(decode: bool) -> Callable[[], RawViewer]:
    def make() -> RawViewer:
        return RawViewer(decode=decode)

    return make


CONNECT = b'{"type":"connect","data":{"server":"' + SERVER_KEY.encode() + b'"}}'


async def open_viewers(
    port: int,
    count: int,
    decode: int = 0,
    batch: int = 200,
    *,
    counting: bool = False,
    tls: ssl.SSLContext | None = None,
) -> list[RawViewer]:
    loop = asyncio.get_running_loop()
    viewers: list[RawViewer] = []
    count_ = counting
    for start in range(0, count, batch):
        chunk = []
        for i in range(start, min(count, start + batch)):
            _t, proto = await loop.create_connection(
                _factory(i < decode), "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None
            )
            chunk.append(proto)
        await asyncio.gather(*(v.opened for v in chunk))
        await asyncio.gather(*(v.listed for v in chunk))
        await asyncio.gather(*(v.request(CONNECT) for v in chunk))
        for v in chunk:
            v.counting = count_ and not v.decode and not v.buffer
        viewers.extend(chunk)
    return viewers


# ---------------------------------------------------------------- database


@contextlib.contextmanager
def database() -> Iterator[str]:
    from dzone.localdb import LocalPostgres
    from shared.db import migrate

    with LocalPostgres() as local:
        migrate(local.url)
        yield local.url


async def seed(url: str, members: int, server_key: str = SERVER_KEY) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO discord_servers (server_id, name, is_default, hide_offline) VALUES ($1, 'Bench', true, false)"
            " ON CONFLICT DO NOTHING",
            server_key,
        )
        await conn.execute("DELETE FROM discord_users WHERE server_id = $1", server_key)
        await conn.copy_records_to_table(
            "discord_users",
            records=[(f"2{i:017d}", server_key, f"user{i:06d}", "online", "#336699") for i in range(members)],
            columns=["user_id", "server_id", "username", "status", "role_color"],
        )
    finally:
        await conn.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# ---------------------------------------------------------------- (a) fan-out

BURST_UPDATE = (
    "UPDATE discord_users SET username = $2 || right(user_id, 3) WHERE server_id = $1 AND user_id = ANY($3)"
)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Cpu:
    """CPU seconds of the server process and of this (client) process over one measurement."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self._server = psutil.Process(server_pid)
        self._start = (self._server_cpu(), cpu_self())

    def _server_cpu(self) -> float:
        times = self._server.cpu_times()
        return float(times.user + times.system)

    def spent(self) -> tuple[float, float]:
        return self._server_cpu() - self._start[0], cpu_self() - self._start[1]


class FanoutBench:
    """One serve process and its viewers: the bare broadcast() ceiling, saturation through the database at a
    burst size, and latency at a steady rate, with the serve's coalesced or per-frame path (``path``)."""

    def __init__(self, url: str, port: int, pid: int, pipe: Any, viewers: list[RawViewer]) -> None:
        self.url, self.port, self.pid, self.pipe, self.viewers = url, port, pid, pipe, viewers
        self.uids = [f"2{i:017d}" for i in range(FANOUT_MEMBERS)]
        self.commits = 0  # every commit renames to a new name: no update is a no-op

    def delivered(self) -> list[int]:
        return [v.delivered(FRAME_LEN) for v in self.viewers]

    async def wait_delivered(self, per_viewer: int, base: list[int], timeout: float = 180) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(d - b >= per_viewer for d, b in zip(self.delivered(), base, strict=True)):
                return time.perf_counter()
            await asyncio.sleep(0.005)
        raise TimeoutError("deliveries incomplete")

    async def set_path(self, coalesce: bool) -> None:
        self.pipe.send(("coalesce", coalesce))
        await asyncio.to_thread(self.pipe.recv)

    async def ceiling(self, frames: int) -> tuple[float, tuple[float, float]]:
        base, cpu = self.delivered(), Cpu(self.pid)
        started = time.perf_counter()
        self.pipe.send(("ceiling", [SAMPLE_FRAME] * frames))
        done = await self.wait_delivered(frames, base)
        await asyncio.to_thread(self.pipe.recv)
        return frames * len(self.viewers) / (done - started), cpu.spent()

    async def saturate(
        self, writers: list[asyncpg.Connection], frames: int, burst: int
    ) -> tuple[float, tuple[float, float]]:
        """``frames`` changes per viewer, committed ``burst`` rows per transaction by the writers at once."""
        transactions = frames // burst
        first = self.commits
        self.commits += transactions
        base, cpu = self.delivered(), Cpu(self.pid)
        started = time.perf_counter()

        async def write(conn: asyncpg.Connection, offset: int) -> None:
            for k in range(offset, transactions, len(writers)):
                at = (k * burst) % FANOUT_MEMBERS
                await conn.execute(BURST_UPDATE, SERVER_KEY, f"b{first + k:06d}", self.uids[at : at + burst])

        await asyncio.gather(*(write(c, i) for i, c in enumerate(writers)))
        done = await self.wait_delivered(transactions * burst, base)
        return transactions * burst * len(self.viewers) / (done - started), cpu.spent()

    async def steady(
        self, writer: asyncpg.Connection, per_s: float, seconds: float, probes: list[RawViewer]
    ) -> tuple[list[float], tuple[float, float]]:
        """One-row commits at ``per_s``; latency from just before COMMIT to arrival at the probe viewers."""
        sent_at: dict[str, float] = {}
        for v in probes:
            v.payloads.clear()
        n = int(per_s * seconds)
        base, cpu = self.delivered(), Cpu(self.pid)
        started = time.perf_counter()
        for seq in range(n):
            name = f"s{self.commits % 10**6:06d}"
            self.commits += 1
            uid = self.uids[seq % FANOUT_MEMBERS]
            sent_at[name + uid[-3:]] = time.perf_counter()
            await writer.execute(BURST_UPDATE, SERVER_KEY, name, [uid])
            delay = started + (seq + 1) / per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await self.wait_delivered(n, base)
        spent = cpu.spent()
        latencies = [
            (received - sent_at[orjson.loads(payload)["data"]["username"]]) * 1000
            for v in probes
            for received, payload in v.payloads
        ]
        return latencies, spent


def _cpu(spent: tuple[float, float]) -> str:
    return f"cpu server {spent[0]:.2f}s client {spent[1]:.2f}s"


async def fanout_run(
    url: str,
    port: int,
    pid: int,
    pipe: Any,
    viewers_n: int,
    bursts: list[int],
    steady_deliveries: float,
    seconds: float,
    tls: ssl.SSLContext | None,
) -> None:
    probes = 20
    viewers = await open_viewers(port, viewers_n, decode=probes, counting=True, tls=tls)
    bench = FanoutBench(url, port, pid, pipe, viewers)
    writers = [await asyncpg.connect(url) for _ in range(4)]
    frames = max(100, 500_000 // viewers_n // 100 * 100)  # per viewer and run: ~500k deliveries
    label = f"fanout{' tls' if tls else ''} viewers={viewers_n:5d}"
    rate, spent = await bench.ceiling(frames)
    print(
        f"{label}  bare broadcast() server, one frame per iteration: {rate:>11,.0f} deliveries/s  {_cpu(spent)}"
    )
    for coalesce in (True, False):
        await bench.set_path(coalesce)
        path = "coalesced" if coalesce else "per-frame broadcast()"
        for burst in bursts:
            rate, spent = await bench.saturate(writers, frames, burst)
            print(
                f"{label}  {path:>21}, {burst:3d} changes per transaction: {rate:>11,.0f} deliveries/s  {_cpu(spent)}"
            )
        per_s = steady_deliveries / viewers_n
        latencies, spent = await bench.steady(writers[0], per_s, seconds, viewers[:probes])
        print(
            f"{label}  {path:>21}, steady {steady_deliveries:,.0f} deliveries/s ({per_s:g} commits/s x {seconds:g}s):"
            f" commit->viewer p50={pct(latencies, 50):.1f} ms p99={pct(latencies, 99):.1f} ms (n={len(latencies)})"
            f"  {_cpu(spent)}"
        )
    for c in writers:
        await c.close()
    for v in viewers:
        assert v.transport is not None
        v.transport.close()


@contextlib.contextmanager
def test_certificate(enabled: bool) -> Iterator[tuple[dict[str, Any], ssl.SSLContext | None]]:
    """With ``--tls``: a throwaway CA and server pair (tests/certs.py); the serve's settings, the viewers' context."""
    if not enabled:
        yield {}, None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.certs import LocalCA

    with tempfile.TemporaryDirectory(prefix="dzone-bench-tls-") as directory:
        ca = LocalCA(Path(directory))
        pair = ca.issue()
        yield {"tls_cert_file": str(pair.cert_file), "tls_key_file": str(pair.key_file)}, ca.client_context()


def fanout(args: argparse.Namespace) -> None:
    with database() as url, test_certificate(args.tls) as (tls_settings, tls):
        asyncio.run(seed(url, FANOUT_MEMBERS))
        for n in args.viewers:
            with serve_process(url, **tls_settings) as (port, pid, pipe):
                asyncio.run(fanout_run(url, port, pid, pipe, n, args.bursts, args.steady, args.seconds, tls))


# ---------------------------------------------------------------- (b) join


async def join_run(port: int, pid: int, size: int, clients: int, joins_each: int) -> None:
    viewers = await open_viewers(port, clients)  # first join reads the server; the rest are measured
    latencies: list[float] = []

    async def loop_joins(v: RawViewer) -> None:
        for _ in range(joins_each):
            started = time.perf_counter()
            answer = await v.request(CONNECT)
            latencies.append((time.perf_counter() - started) * 1000)
            assert answer.startswith(b'{"type":"server-join"'), answer[:80]

    started, cpu = time.perf_counter(), Cpu(pid)
    await asyncio.gather(*(loop_joins(v) for v in viewers))
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = cpu.spent()
    # one viewer alone: latency without queueing behind the others
    solo = []
    for _ in range(50):
        t = time.perf_counter()
        await viewers[0].request(CONNECT)
        solo.append((time.perf_counter() - t) * 1000)
    for v in viewers:
        assert v.transport is not None
        v.transport.close()
    print(
        f"join members={size:6d}: solo p50={pct(solo, 50):.2f} ms p99={pct(solo, 99):.2f} ms  |  "
        f"{clients} concurrent viewers: p50={pct(latencies, 50):.1f} ms p99={pct(latencies, 99):.1f} ms, "
        f"{len(latencies) / elapsed:,.0f} joins/s; CPU per join: server {server_cpu / len(latencies) * 1000:.2f} ms, "
        f"client {client_cpu / len(latencies) * 1000:.2f} ms"
    )


def join(args: argparse.Namespace) -> None:
    with database() as url:
        for size in args.sizes:
            asyncio.run(seed(url, size))
            with serve_process(url) as (port, pid, _pipe):
                joins_each = max(10, min(50, 200_000 // max(size, 1) // 10))
                asyncio.run(join_run(port, pid, size, 20, joins_each))


# ---------------------------------------------------------------- (c) memory


async def memory_run(port: int, pid: int, viewers_n: int) -> None:
    import psutil

    proc = psutil.Process(pid)
    warm = await open_viewers(port, 100)
    await asyncio.sleep(1)  # settle allocations before the baseline, not synchronisation
    before = proc.memory_info().rss
    viewers = await open_viewers(port, viewers_n)
    await asyncio.sleep(2)
    after = proc.memory_info().rss
    per = (after - before) / viewers_n
    for v in [*warm, *viewers]:
        assert v.transport is not None
        v.transport.close()
    print(
        f"memory: {viewers_n} idle joined viewers: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
        f"{per / 1024:.1f} KiB per viewer"
    )


def memory(args: argparse.Namespace) -> None:
    with database() as url:
        asyncio.run(seed(url, 10))
        with serve_process(url) as (port, pid, _pipe):
            asyncio.run(memory_run(port, pid, args.viewers))


def main() -> None:
    raise_fd_limit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fanout")
    p.add_argument("--viewers", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--bursts", type=int, nargs="+", default=[1, 10, 100], help="changes per transaction")
    p.add_argument("--steady", type=float, default=100_000, help="deliveries/s of the latency run")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    p.add_argument("--tls", action="store_true", help="viewers over wss:// (native TLS, a test certificate)")
    p.set_defaults(run=fanout)
    p = sub.add_parser("join")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10_000])
    p.set_defaults(run=join)
    p = sub.add_parser("memory")
    p.add_argument("--viewers", type=int, default=5000)
    p.set_defaults(run=memory)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
