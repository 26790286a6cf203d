"""PostgreSQL behind a real PgBouncer in transaction mode (tests/pgbouncer.py), as docs/postgres.md says to.

With the documented settings (``DATABASE_URL`` through the pooler, ``DATABASE_DIRECT_URL`` for LISTEN,
``DZONE_DATABASE_POOLER=transaction``) the ingest syncs under churn without a database failure and viewers get
both the simulator's presences and a change typed in SQL; ``dzone migrate`` and ``dzone status`` work through
it. Without them the serve never becomes ready and ``/readyz`` says why. The restart of the pooler mid-storm
is the fault suite's ``pooler-restart`` case.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dzone.status import read_status, render
from serve import WebSocketServer
from tests.cluster import cluster
from tests.pg import PgServer, with_database
from tests.pgbouncer import pgbouncer
from tests.test_serve_support import db_world, settings

DZONE = str(Path(sys.executable).parent / "dzone")


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_pooled_ingest_and_serve_relay_everything_with_no_database_failure(
    database_url: str, tmp_path: Path
) -> None:
    with pgbouncer(database_url) as bouncer:
        async with cluster(database_url, tmp_path, seed=22, pooler=bouncer) as c:
            await c.churn(events=600)
            await c.pause_and_converge("pooled churn", budget=5.0)
            # A rename typed in SQL reaches the viewers through the direct LISTEN connection.
            viewer = c.viewers[0]
            uid = next(iter(viewer.world))
            conn = await c.db()
            await conn.execute(
                "UPDATE discord_users SET username = 'typed in psql' WHERE server_id = $1 AND user_id = $2",
                viewer.server_id,
                uid,
            )
            deadline = time.monotonic() + 10
            while viewer.world[uid].get("username") != "typed in psql":
                assert time.monotonic() < deadline, (
                    f"the rename never reached the viewer: {viewer.world[uid]}"
                )
                await asyncio.sleep(0.05)  # polling the viewer's map
            assert viewer.world == await db_world(conn, viewer.server_id, viewer.hide_offline)
            ingest = c.ingests[0]
            assert ingest.worker is not None  # type: ignore[union-attr]
            stats = ingest.worker.writer.stats  # type: ignore[union-attr]
            presences = sum(v.presences for v in c.viewers)
            print(
                f"\npooled (PgBouncer transaction mode): {presences} presences relayed to "
                f"{len(c.viewers)} viewers, {stats.rows_committed} rows in {stats.batches} batches, "
                f"{stats.failures} database failures"
            )
            assert stats.failures == 0
            assert presences > 100
            ready, problems = c.serves[0].readiness()
            assert ready, problems
            # every connection is named: the serve's LISTEN goes direct, the rest through the pooler,
            # whose server connection shows the ingest's name only while it runs the ingest's transaction
            names: set[str] = set()
            deadline = time.monotonic() + 30
            while not {"dzone-serve-listener", "dzone-ingest"} <= names:
                assert time.monotonic() < deadline, names
                names |= {
                    r["application_name"]
                    for r in await conn.fetch(
                        "SELECT application_name FROM pg_stat_activity WHERE datname = $1", c.database
                    )
                }
                await asyncio.sleep(0.05)  # polling pg_stat_activity while the storm goes on


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_serve_through_a_transaction_pooler_without_the_settings_is_never_ready(
    database_url: str,
) -> None:
    with pgbouncer(database_url) as bouncer:
        # production probe timings: the serve must not become ready within 30 s
        serve = WebSocketServer(
            port=0,
            host="127.0.0.1",
            settings=settings(bouncer.url, listener_probe_interval_s=5.0, listener_probe_timeout_s=5.0),
        )
        await serve.open()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                code, body = await asyncio.to_thread(readyz, serve.port)
                assert code == 503 and not body["ready"], body
                await asyncio.sleep(1)  # sampling /readyz for 30 s
            assert "LISTEN hears nothing" in body["problems"]["feed"], body
            assert "DATABASE_DIRECT_URL" in body["problems"]["feed"]
            assert serve.metrics.feed_probe_failures._value.get() >= 2
            # dzone status, read directly, finds no live listener on the feed
            status = await read_status(database_url, feed_wait_s=2.0)
            assert "live (" not in render(status)
        finally:
            await serve.close()


async def test_a_serve_with_the_pooler_setting_but_no_direct_url_refuses_to_start(database_url: str) -> None:
    serve = WebSocketServer(
        port=0, host="127.0.0.1", settings=settings(database_url, database_pooler="transaction")
    )
    with pytest.raises(Exception, match="needs DATABASE_DIRECT_URL"):
        await serve.open()


def _dzone(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DZONE_"))}
    return subprocess.run(
        [DZONE, *args], env={**base, **env}, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.timeout(180)
def test_migrate_and_status_through_a_transaction_pooler(database_url: str) -> None:
    name = f"empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(_execute(database_url, f"CREATE DATABASE {name}"))
    empty = with_database(database_url, name)
    try:
        with pgbouncer(empty) as bouncer:
            pooled = {"DATABASE_URL": bouncer.url, "DZONE_DATABASE_POOLER": "transaction"}
            migrated = _dzone("migrate", **pooled)
            assert migrated.returncode == 0, migrated.stderr
            again = _dzone("migrate", **pooled)  # twice is a no-op, through the pooler too
            assert again.returncode == 0, again.stderr
            shown = _dzone("status", **pooled)
            assert shown.returncode == 0, shown.stderr
            assert "Servers (0)" in shown.stdout
            # with the direct URL, status reads PostgreSQL itself
            direct = _dzone("status", DATABASE_DIRECT_URL=empty, **pooled)
            assert direct.returncode == 0, direct.stderr
            # the pooler's server connections carry the names of the clients they served last
            assert "Sessions of dzone processes" in direct.stdout, direct.stdout
    finally:
        asyncio.run(_execute(database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def test_migrate_with_logins_refused_says_so_in_one_line(pg: PgServer, database_url: str) -> None:
    if pg.local is None:
        pytest.skip("needs the embedded PostgreSQL (unset DATABASE_URL)")
    with pg.refuse_logins():
        result = _dzone("migrate", DATABASE_URL=database_url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "pg_hba.conf rejects connection" in lines[0], lines
