"""Cost of the visibility rules on the ingest's writes: full sync and presence batches, with and without rules.

``discord_users.hidden`` is computed by a per-row trigger; this prints what the ingest's own statements
(ingest/store.py) take on one guild of ``--members`` rows: the first full sync (every row inserted), a
full sync that changes nothing, presence batches (``WRITE_MEMBERS`` upserts of ``--batch`` rows changing
the status), the same with rules on the server, and an operator's rule change (the server recomputed).
``floor`` is the same with the hidden triggers disabled: what the rows cost without the rules at all.
PostgreSQL is ``DATABASE_URL`` (its role needs CREATEDB) or an embedded server.

Run: .venv/bin/python bench/bench_visibility.py [--members 100000] [--batch 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import asyncpg

from ingest import store
from ingest.mapping import MemberRow
from shared.db import migrate

SERVER = "1000"
ROLES = ("501", "502", "503", "504")
HIDDEN_TRIGGERS = """
SELECT tgname FROM pg_trigger
WHERE tgrelid = 'discord_users'::regclass AND NOT tgisinternal AND tgname LIKE 'discord_users_hidden%'
"""


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from dzone.localdb import LocalPostgres

    with LocalPostgres() as local:
        yield local.url


def members(n: int, status: str) -> list[MemberRow]:
    return [
        MemberRow(SERVER, str(10**6 + i), f"member {i}", status, "#99aab5", ROLES[i % len(ROLES)])
        for i in range(n)
    ]


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def run_variant(admin_url: str, args: argparse.Namespace, floor: bool) -> dict[str, float]:
    name = f"bench_vis_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(migrate, url)
        conn = await asyncpg.connect(url)
        try:
            if floor:
                for row in await conn.fetch(HIDDEN_TRIGGERS):
                    await conn.execute(f"ALTER TABLE discord_users DISABLE TRIGGER {row['tgname']}")
            return await measure(conn, args)
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def presence_rounds(conn: asyncpg.Connection, args: argparse.Namespace) -> float:
    """Seconds per 100k rows of presence upserts (every row changes status each round), median of rounds."""
    samples = []
    for round_ in range(args.rounds):
        rows = members(args.members, ("online", "idle")[round_ % 2])
        started = time.perf_counter()
        for at in range(0, len(rows), args.batch):
            await store.write_members(conn, rows[at : at + args.batch], [])
        samples.append((time.perf_counter() - started) * 100_000 / args.members)
    return float(statistics.median(samples))


async def measure(conn: asyncpg.Connection, args: argparse.Namespace) -> dict[str, float]:
    n, threshold = args.members, 500
    out: dict[str, float] = {}
    out["first full sync"] = await timed(
        lambda: store.full_sync(conn, SERVER, "G", members(n, "offline"), threshold)
    )
    out["unchanged full sync"] = await timed(
        lambda: store.full_sync(conn, SERVER, "G", members(n, "offline"), threshold)
    )
    out["presence /100k, no rules"] = await presence_rounds(conn, args)
    await conn.execute("INSERT INTO discord_visibility VALUES ($1, 'hide_user', '1000007')", SERVER)
    await conn.execute("INSERT INTO discord_visibility VALUES ($1, 'opt_out_role', 'hide me')", SERVER)
    out["presence /100k, 2 rules"] = await presence_rounds(conn, args)
    out["rule change (recompute)"] = await timed(
        lambda: conn.execute(
            "INSERT INTO discord_visibility VALUES ($1, 'exclude_role', $2)", SERVER, ROLES[0]
        )
    )
    out["roles change in sync"] = await timed(
        lambda: store.full_sync(conn, SERVER, "G", members_shifted(n), threshold)
    )
    return out


def members_shifted(n: int) -> list[MemberRow]:
    """Every member's roles change (a quarter of them gain the excluded role)."""
    return [
        MemberRow(SERVER, str(10**6 + i), f"member {i}", "offline", "#99aab5", ROLES[(i + 1) % len(ROLES)])
        for i in range(n)
    ]


async def main(args: argparse.Namespace) -> None:
    with server_url() as admin_url:
        results = {
            "floor (no hidden trigger)": await run_variant(admin_url, args, floor=True),
            "with the hidden trigger": await run_variant(admin_url, args, floor=False),
        }
    steps = list(next(iter(results.values())))
    print(f"members={args.members} batch={args.batch} rounds={args.rounds}; seconds")
    print(f"{'step':32}" + "".join(f"{name:>28}" for name in results))
    for step in steps:
        print(f"{step:32}" + "".join(f"{r.get(step, float('nan')):>28.3f}" for r in results.values()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
