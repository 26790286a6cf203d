"""``dzone demo``: the whole product on one machine with one command.

It starts (or uses) PostgreSQL, migrates it, then runs ``dzone simulate`` (unless DISCORD_BOT_TOKEN is
set: then real Discord), ``dzone ingest`` and ``dzone serve`` as child processes, waits for each to be
ready by polling, and prints what to open. Ctrl-C or SIGTERM stops the children (by PID, newest first)
and removes everything the demo created. Child logs go to files in a temporary directory, shown on failure
and then kept (the message says where).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import asyncpg
import click
from sqlalchemy.exc import SQLAlchemyError

from dzone.localdb import LocalDBError, LocalPostgres, free_port
from shared.db import DATABASE_ERRORS, migrate, redacted
from shared.errors import DzoneError
from shared.settings import ConfigError, DatabaseSettings, load

# The simulator accepts only this token, and the demo's ingest presents it: a fixed, public, fake value.
DEMO_BOT_TOKEN = "dzone-demo-simulated-bot-token"
SERVER_COUNT_SQL = "SELECT count(*) FROM discord_servers WHERE departed_at IS NULL"
STOP_GRACE_S = 10.0  # per child, after SIGTERM, before SIGKILL
LOG_TAIL_CHARS = 3000


class DemoError(DzoneError):
    """A part of the demo failed to start or stopped on its own; the message says which and why."""


class Interrupted(DzoneError):
    """Ctrl-C or SIGTERM arrived while starting."""


@dataclass
class Child:
    """One child process of the demo and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""


@dataclass
class Demo:
    """The running demo: what it started, so that :meth:`stop` can undo exactly that."""

    workdir: Path
    stop_requested: threading.Event = field(default_factory=threading.Event)
    children: list[Child] = field(default_factory=list)
    database: LocalPostgres | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        """Start ``python -m dzone ARGS`` in its own session (Ctrl-C reaches us only; we stop it)."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "dzone", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def check_children(self) -> None:
        """Raise DemoError if a child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DemoError(f"{child.name} exited with code {code}; its last output:\n{child.tail()}")

    def wait_until(self, what: str, condition: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``condition`` (and the children) until true; stop early on Ctrl-C."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.check_children()
            if self.stop_requested.is_set():
                raise Interrupted
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c.name} ---\n{c.tail()}" for c in self.children)
                raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")
            self.stop_requested.wait(0.2)

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop every child (newest first), then the embedded database, then remove the work directory
        (unless ``keep_logs``: after a failure the child logs stay for the operator to read)."""
        for child in reversed(self.children):
            terminate(child.process)
        self.children.clear()
        if self.database is not None:
            self.database.stop()
            self.database = None
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM one child by PID, SIGKILL it if it has not exited within the grace period."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_GRACE_S)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    """True when GET ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def server_count(url: str) -> int:
    """How many servers the ingest has written (0 when the database is not reachable yet)."""

    async def count() -> int:
        conn = await asyncpg.connect(url, timeout=2)
        try:
            return int(await conn.fetchval(SERVER_COUNT_SQL, timeout=2))
        finally:
            await conn.close()

    try:
        return asyncio.run(count())
    except DATABASE_ERRORS:
        return 0


def read_exports(log: Path) -> dict[str, str]:
    """``NAME=value`` lines the simulator prints once it is listening."""
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            name, sep, value = line.partition("=")
            if sep and name.startswith("DZONE_") and name.isupper():
                values[name] = value.strip()
    return values


@contextlib.contextmanager
def signals_set(event: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``event`` instead of raising, so shutdown runs in order."""

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Progress:
    """One line per step: what is starting, then how long it took."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.index = 0
        self.started = 0.0

    def begin(self, text: str) -> None:
        self.index += 1
        self.started = time.monotonic()
        click.echo(f"[{self.index}/{self.steps}] {text} … ", nl=False)

    def done(self, note: str = "") -> None:
        elapsed = time.monotonic() - self.started
        click.echo(click.style("ok", fg="green") + f" ({elapsed:.1f} s){'  ' + note if note else ''}")


@dataclass(frozen=True)
class DemoOptions:
    """What ``dzone demo`` was asked for (its command-line options)."""

    host: str
    port: int
    guilds: int
    members: int
    presence_rate: float
    message_rate: float
    churn: float
    seed: int
    static_dir: str | None
    log_level: str
    ready_timeout: float


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the serve listens on.")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535), help="Serve's port.")
@click.option("--guilds", default=3, show_default=True, type=click.IntRange(1, 50), help="Simulated guilds.")
@click.option(
    "--members",
    default=300,
    show_default=True,
    type=click.IntRange(2, 20_000),
    help="Members per simulated guild (most are offline, as on real servers).",
)
@click.option(
    "--presence-rate",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Simulated presence changes per second.",
)
@click.option(
    "--message-rate",
    default=1.5,
    show_default=True,
    type=click.FloatRange(0),
    help="Simulated chat messages per second.",
)
@click.option(
    "--churn",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0),
    help="Simulated joins and leaves per second.",
)
@click.option("--seed", default=1, show_default=True, type=int, help="Same seed, same simulated world.")
@click.option(
    "--static-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Serve a d-zone build instead of the built-in live view.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of the child processes (their logs go to files).",
)
@click.option(
    "--ready-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds to wait for each part to become ready.",
)
def demo(
    host: str,
    port: int,
    guilds: int,
    members: int,
    presence_rate: float,
    message_rate: float,
    churn: float,
    seed: int,
    static_dir: str | None,
    log_level: str,
    ready_timeout: float,
) -> None:
    """Run everything locally: PostgreSQL, simulated Discord, ingest and serve; Ctrl-C stops and cleans up.

    DATABASE_URL set: use that database instead of a temporary one. DISCORD_BOT_TOKEN set: ingest from
    real Discord instead of the simulator.
    """
    options = DemoOptions(
        host,
        port,
        guilds,
        members,
        presence_rate,
        message_rate,
        churn,
        seed,
        static_dir,
        log_level,
        ready_timeout,
    )
    try:
        database_url = load(DatabaseSettings).database_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    real_token = os.environ.get("DISCORD_BOT_TOKEN", "").strip()
    if not port_is_free(host, port):
        raise click.ClickException(f"port {port} on {host} is in use: stop what runs there or pass --port")

    demo_run = Demo(workdir=Path(tempfile.mkdtemp(prefix="dzone-demo-")))
    failed = True
    with signals_set(demo_run.stop_requested):
        try:
            run(demo_run, options, database_url=database_url, real_token=real_token)
            failed = False
        except Interrupted:
            click.echo("\ninterrupted")
            failed = False
        except (DemoError, LocalDBError) as exc:
            click.echo("")
            raise click.ClickException(f"{exc}\n(child logs kept in {demo_run.workdir})") from None
        finally:
            click.echo("stopping: serve, ingest, simulator, database …", nl=False)
            demo_run.stop(keep_logs=failed)
            if failed:
                click.echo(f" done; temporary database removed, child logs kept in {demo_run.workdir}")
            else:
                click.echo(" done; temporary files removed")


def run(demo_run: Demo, options: DemoOptions, *, database_url: str | None, real_token: str) -> None:
    """Start every part in order, print where to look, then wait for Ctrl-C or a child's failure."""
    progress = Progress(5 if not real_token else 4)
    click.echo(f"dzone demo  (child logs: {demo_run.workdir})")

    if database_url is None:
        progress.begin("PostgreSQL: starting a temporary embedded server")
        demo_run.database = LocalPostgres().start()
        database_url = demo_run.database.url
        progress.done(str(demo_run.database.directory))
    else:
        progress.begin(f"PostgreSQL: using DATABASE_URL {redacted(database_url)}")
        progress.done()
    progress.begin("schema: migrating")
    try:
        migrate(database_url)
    except (*DATABASE_ERRORS, SQLAlchemyError) as exc:
        raise DemoError(f"cannot migrate the database at {redacted(database_url)}: {exc}") from None
    progress.done()

    env = {**os.environ, "DATABASE_URL": database_url, "DZONE_LOG_LEVEL": options.log_level}
    if real_token:
        click.echo("       DISCORD_BOT_TOKEN is set: ingesting from real Discord, no simulator")
    else:
        progress.begin(f"simulated Discord: {options.guilds} guilds x {options.members} members")
        sim = demo_run.spawn(
            "simulate",
            [
                "simulate",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--guilds",
                str(options.guilds),
                "--members",
                str(options.members),
                "--presence-rate",
                str(options.presence_rate),
                "--message-rate",
                str(options.message_rate),
                "--churn",
                str(options.churn),
                "--seed",
                str(options.seed),
                "--log-level",
                options.log_level,
            ],
            {**env, "DZONE_SIM_BOT_TOKEN": DEMO_BOT_TOKEN},
        )
        needed = ("DZONE_DISCORD_API_BASE", "DZONE_DISCORD_GATEWAY_URL")
        demo_run.wait_until(
            "the simulator's URLs",
            lambda: all(k in read_exports(sim.log) for k in needed),
            options.ready_timeout,
        )
        exports = read_exports(sim.log)
        stats_url = exports["DZONE_DISCORD_API_BASE"].removesuffix("/api/v10") + "/_sim/stats"
        demo_run.wait_until("the simulator's HTTP API", lambda: http_ok(stats_url), options.ready_timeout)
        env.update({name: exports[name] for name in needed})
        env["DISCORD_BOT_TOKEN"] = DEMO_BOT_TOKEN
        progress.done(exports["DZONE_DISCORD_API_BASE"])

    progress.begin("ingest: syncing guilds into PostgreSQL")
    ingest_port = free_port()  # not the fixed 8081: another ingest or demo may hold it
    shown_host = f"[{options.host}]" if ":" in options.host else options.host
    base = f"http://{'127.0.0.1' if options.host in ('0.0.0.0', '') else shown_host}:{options.port}"
    # /dzone link answers the demo's own address unless DZONE_PUBLIC_URL says otherwise.
    demo_run.spawn(
        "ingest", ["ingest", "--http-port", str(ingest_port)], {"DZONE_PUBLIC_URL": f"{base}/", **env}
    )
    if real_token:  # a real bot may be in any number of guilds, including none yet
        demo_run.wait_until(
            "the ingest's first server", lambda: server_count(database_url) >= 1, options.ready_timeout
        )
    else:
        demo_run.wait_until(
            f"{options.guilds} servers in discord_servers",
            lambda: server_count(database_url) >= options.guilds,
            options.ready_timeout,
        )
    progress.done(f"{server_count(database_url)} servers")

    progress.begin(f"serve: starting on {options.host}:{options.port}")
    serve_args = ["serve", "--host", options.host, "--port", str(options.port)]
    if options.static_dir:
        serve_args += ["--static-dir", options.static_dir]
    # One replica and nobody to hand viewers to: Ctrl-C closes them at once rather than draining.
    demo_run.spawn("serve", serve_args, {"DZONE_DRAIN_S": "0", **env})
    demo_run.wait_until(f"{base}/readyz", lambda: http_ok(f"{base}/readyz"), options.ready_timeout)
    progress.done()

    pids = ", ".join(f"{c.name} {c.process.pid}" for c in demo_run.children)
    click.echo("")
    click.echo(
        click.style(f"  Open {base}/", bold=True) + "   (live view: pick a server, watch members move)"
    )
    click.echo(f"  d-zone front end: add ?socketURL={base.replace('http', 'ws', 1)}/ws to its URL")
    click.echo(f"  Inspect: DATABASE_URL={database_url} dzone status")
    click.echo(f"  Health: {base}/readyz   Metrics: {base}/metrics")
    click.echo(f"  Ingest: http://127.0.0.1:{ingest_port}/readyz   http://127.0.0.1:{ingest_port}/metrics")
    click.echo(f"  Processes: {pids}")
    click.echo("  Ctrl-C stops everything and removes what the demo created.")
    while not demo_run.stop_requested.wait(0.5):
        demo_run.check_children()
