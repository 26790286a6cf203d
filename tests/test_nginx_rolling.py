"""docs/deploy.md's rolling restart, run behind the shipped nginx recipe: a viewer always has a backend.

Two serve replicas of the "old release" run on a database one migration behind, on two ports of a
four-port range that nginx lists whole (as the recipe lists DZONE_SERVE_PORTS). The documented steps then
run in order: the migrate service's command (taken from docker-compose.yml), two new replicas on the other
ports of the range, SIGTERM to each old replica, one at a time, each draining and exiting 0. Throughout,
a viewer opens a new socket through nginx again and again: every one must get its server list.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import yaml
from alembic.script import ScriptDirectory
from websockets.asyncio.client import connect

from shared.db import alembic_config, downgrade
from tests.certs import LocalCA
from tests.nginx import nginx_in_front
from tests.serve_process import free_port, serve_process
from tests.test_compose import COMPOSE, _rolling_restart_commands
from tests.test_serve_support import Viewer, add_server
from tests.waiting import wait_for

A = "100000000000000001"
PROBE_PAUSE_S = 0.05  # between a viewer's visits: pacing, not synchronisation


def _head_and_previous() -> tuple[str, str]:
    script = ScriptDirectory.from_config(alembic_config("postgresql://offline/dzone"))  # type: ignore[arg-type]
    head = script.get_revision("head")
    assert head is not None and isinstance(head.down_revision, str)
    return head.revision, head.down_revision


def _migrate_step(database_url: str) -> subprocess.CompletedProcess[str]:
    """The step `docker compose run --rm migrate`: the migrate service's command, as its container runs it."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["migrate"]["command"]
    assert command[0] == "dzone"
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "dzone", *command[1:]], env=env, capture_output=True, text=True, timeout=120
    )


def _more_than(visits: list[str], count: int) -> bool:
    return len(visits) > count


async def test_the_documented_rolling_restart_behind_nginx(database_url: str, tmp_path: Path) -> None:
    steps = _rolling_restart_commands()
    assert steps.index("docker compose run --rm migrate") < next(
        i for i, step in enumerate(steps) if "--scale serve=" in step
    ), steps
    head, previous = _head_and_previous()
    await asyncio.to_thread(downgrade, database_url, previous)  # the old release's schema
    conn = await asyncpg.connect(database_url)
    try:
        await add_server(conn, A, "Rolling Guild", is_default=True)
        ca = LocalCA(tmp_path / "ca")
        client_tls = ca.client_context()
        ports = [free_port() for _ in range(4)]  # the published range: old replicas on two, new on two
        drain = {"DZONE_DRAIN_S": "3"}
        visits: list[str] = []  # the phase each successful visit happened in
        failures: list[str] = []
        phase = "old replicas"
        stop = asyncio.Event()

        async def viewer_keeps_coming(url: str) -> None:
            while not stop.is_set():
                try:
                    async with connect(url, ssl=client_tls, open_timeout=10) as ws:
                        listing = await Viewer(ws).expect("server-list", timeout=10)
                        assert [s["name"] for s in listing["data"].values()] == ["Rolling Guild"]
                    visits.append(phase)
                except Exception as exc:
                    failures.append(f"{phase}: {exc!r}")
                await asyncio.sleep(PROBE_PAUSE_S)

        with ExitStack() as stack:
            old = [
                stack.enter_context(serve_process(database_url, tmp_path, drain, port=p)) for p in ports[:2]
            ]
            proxy = stack.enter_context(nginx_in_front(ports, ca.issue(), tmp_path / "nginx", client_tls))
            probe = asyncio.create_task(viewer_keeps_coming(f"wss://127.0.0.1:{proxy.https_port}/ws"))
            await wait_for(lambda: len(visits) >= 3, timeout=30, message="viewers through nginx")

            phase = "migrate"
            migrated = await asyncio.to_thread(_migrate_step, database_url)
            assert migrated.returncode == 0, migrated.stderr
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head

            phase = "new replicas beside the old"
            for port in ports[2:]:
                stack.enter_context(serve_process(database_url, tmp_path, drain, port=port))
            for replica in old:
                phase = f"old replica on {replica.port} draining"
                seen = len(visits)
                replica.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(replica.process.wait, 60)
                assert code == 0, replica.output()
                await wait_for(functools.partial(_more_than, visits, seen + 2), timeout=30, message="visits")
            phase = "new replicas alone"
            seen = len(visits)
            await wait_for(lambda: len(visits) >= seen + 5, timeout=30, message="visits after the restart")
            stop.set()
            await asyncio.wait_for(probe, 30)
            nginx_errors = proxy.error_log()
    finally:
        await conn.close()
    phases = {p: visits.count(p) for p in dict.fromkeys(visits)}
    print(f"\nrolling restart behind nginx: {len(visits)} viewers served, {len(failures)} refused; {phases}")
    assert not failures, f"{failures[:5]}\nnginx's error log:\n{nginx_errors[-3000:]}"
    assert set(phases) >= {"old replicas", "new replicas alone"} | {
        f"old replica on {port} draining" for port in ports[:2]
    }
