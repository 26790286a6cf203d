"""The README's run command, end to end: ``make demo`` on a machine with nothing configured.

It must start every part, answer /readyz, show members in the live view and list the guilds in
``dzone status``; Ctrl-C (SIGINT to its process group, as a terminal sends it) must stop every child
and remove the temporary database and log directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
import pytest
import websockets

from tests.browser import chromium, members_shown, save_screenshot, wait_until

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DemoRun:
    """The demo as a terminal user runs it; its output collected line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False  # every writer of the output pipe has exited

    def pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_closed(self, timeout: float) -> None:
        """Until the demo (make and dzone) has exited and closed its output."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.closed, timeout):
                pytest.fail(f"the demo did not exit within {timeout}s:\n" + "\n".join(self.lines))

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; fail with the output if none comes in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    output = "\n".join(self.lines)
                    pytest.fail(f"demo printed no line matching {pattern!r}:\n{output}")
                self.changed.wait(min(remaining, 0.5))

    @property
    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


def _demo_command(port: int) -> list[str]:
    """`make demo` when the virtualenv is up to date (what the README says), else the same dzone entry point."""
    args = f"--port {port}"
    up_to_date = subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT, check=False).returncode == 0
    if up_to_date:
        return ["make", "--no-print-directory", "demo", f"DEMO_ARGS={args}"]
    return [str(Path(sys.executable).parent / "dzone"), "demo", *args.split()]


@contextmanager
def running_demo(command: list[str], env: dict[str, str]) -> Iterator[DemoRun]:
    """Start the demo in its own process group, like a terminal job; Ctrl-C it on the way out."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    run = DemoRun(process)
    threading.Thread(target=run.pump, daemon=True).start()
    try:
        yield run
    finally:
        if process.poll() is None:  # the test failed before its own Ctrl-C: clean up the same way
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _clean_env() -> dict[str, str]:
    """This environment without the two variables that change what the demo does."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DISCORD_BOT_TOKEN")}
    env["DZONE_LOG_LEVEL"] = "info"
    return env


@pytest.fixture
def demo() -> Iterator[DemoRun]:
    with running_demo(_demo_command(_free_port()), _clean_env()) as run:
        yield run


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status, answer.read()


async def _default_server_snapshot(ws_url: str) -> tuple[dict[str, object], dict[str, object]]:
    """server-list, then the server-join of the default server, as the d-zone client asks for them."""
    async with websockets.connect(ws_url, open_timeout=10) as ws:
        server_list = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert server_list["type"] == "server-list"
        await ws.send(json.dumps({"type": "connect", "data": {"server": None}}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == "server-join":
                return server_list["data"], frame["data"]


def test_make_demo_runs_everything_and_cleans_up(demo: DemoRun) -> None:
    open_url = demo.wait_for_line(r"Open (http://\S+)/", STARTUP_TIMEOUT_S).group(1)
    workdir = Path(demo.wait_for_line(r"child logs: (\S+)\)", 1).group(1))
    pg_dir = Path(demo.wait_for_line(r"PostgreSQL: starting.* ok .*  (\S+dzone-pg-\S+)", 1).group(1))
    database_url = demo.wait_for_line(r"DATABASE_URL=(\S+) dzone status", 1).group(1)
    pids = {
        name: int(pid)
        for name, pid in re.findall(r"(\w+) (\d+)", demo.wait_for_line(r"Processes: (.*)", 1)[1])
    }
    assert set(pids) == {"simulate", "ingest", "serve"}
    assert workdir.is_dir() and pg_dir.is_dir()

    # /readyz answers 200
    status, body = _get(f"{open_url}/readyz")
    assert status == 200, body

    # the viewers' protocol: three guilds listed, the default one has members
    ws_url = open_url.replace("http://", "ws://") + "/ws"
    servers, joined = asyncio.run(_default_server_snapshot(ws_url))
    assert len(servers) == 3
    assert len(joined["users"]) > 0  # type: ignore[arg-type]

    # dzone status lists the three guilds by name
    result = subprocess.run(
        [sys.executable, "-m", "dzone", "status"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Servers (3)" in result.stdout
    assert "Feed listeners (1)" in result.stdout
    for entry in servers.values():
        assert entry["name"] in result.stdout  # type: ignore[index]

    # the live view shows the default guild's members (in a browser when one is installed)
    if _browser_available():
        with chromium() as driver:
            driver.get(f"{open_url}/")
            wait_until(driver, lambda d: len(members_shown(d)) > 0, "members in the live view", 30)
            count = driver.find_element("id", "member-count").text
            assert int(count) > 0
            # simulated chat reaches the page through ingest, NOTIFY and serve
            wait_until(
                driver,
                lambda d: d.find_elements("css selector", "#chat-log li[data-uid]"),
                "a chat line from the simulator",
                45,
            )
            save_screenshot(driver, "demo-live-view.png")

    # Ctrl-C: every child stops, the temporary database and logs are removed
    os.killpg(demo.process.pid, signal.SIGINT)
    demo.wait_closed(60)
    demo.process.wait(timeout=10)  # make reports the interrupt in its exit code; dzone's output tells
    assert "temporary files removed" in demo.output, demo.output
    assert "Error" not in demo.output, demo.output
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) still runs after Ctrl-C"
    assert not workdir.exists()
    assert not pg_dir.exists()


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _browser_available() -> bool:
    """In CI the browser must be there (chromium() fails otherwise); elsewhere it is optional."""
    found = shutil.which("chromium") is not None and shutil.which("chromedriver") is not None
    return bool(os.environ.get("CI")) or found


async def test_demo_uses_database_url_and_the_discord_of_the_environment(database_url: str) -> None:
    """DATABASE_URL set: that database, kept afterwards. DISCORD_BOT_TOKEN set: no simulator of its own;
    the ingest talks to the Discord the environment names (here a simulator standing in for Discord)."""
    from simulator.config import SimConfig
    from simulator.server import Simulator
    from simulator.testing import SIM_TOKEN

    async with Simulator(SimConfig(guilds=2, members=20, seed=3, bot_token=SIM_TOKEN)) as discord:
        env = {
            **_clean_env(),
            "DATABASE_URL": database_url,
            "DISCORD_BOT_TOKEN": SIM_TOKEN,
            "DZONE_DISCORD_API_BASE": discord.api_base,
            "DZONE_DISCORD_GATEWAY_URL": discord.gateway_url,
        }
        command = [str(Path(sys.executable).parent / "dzone"), "demo", "--port", str(_free_port())]
        with running_demo(command, env) as run:
            await asyncio.to_thread(run.wait_for_line, r"Open http://", STARTUP_TIMEOUT_S)
            assert "simulated Discord" not in run.output
            assert "real Discord" in run.output
            assert "PostgreSQL: using DATABASE_URL" in run.output
            processes = (await asyncio.to_thread(run.wait_for_line, r"Processes: (.*)", 1)).group(1)
            assert [name for name, _ in re.findall(r"(\w+) (\d+)", processes)] == ["ingest", "serve"]
            os.killpg(run.process.pid, signal.SIGINT)
            await asyncio.to_thread(run.wait_closed, 60)
        names = sorted(g.name for g in discord.world.guilds.values())
    conn = await asyncpg.connect(database_url)
    try:  # the operator's database keeps what the demo wrote
        stored = sorted(r["name"] for r in await conn.fetch("SELECT name FROM discord_servers"))
    finally:
        await conn.close()
    assert stored == names


def _demo_fails(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dzone"), "demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout + result.stderr


def test_demo_explains_an_unreachable_database() -> None:
    # port 1 on loopback: nothing listens, so the connection is refused at once
    env = {**_clean_env(), "DATABASE_URL": "postgresql://u:secret@127.0.0.1:1/x"}
    output = _demo_fails(["--port", str(_free_port())], env)
    assert "cannot migrate the database at postgresql://u:***@127.0.0.1:1/x" in output
    assert "secret" not in output
    # a failure keeps the child logs (as the docs say) and says where
    kept = re.search(r"child logs kept in (\S+)", output)
    assert kept and Path(kept.group(1)).is_dir(), output
    shutil.rmtree(kept.group(1))


def test_demo_refuses_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        output = _demo_fails(["--port", str(port)], _clean_env())
    assert f"port {port} on 127.0.0.1 is in use" in output
