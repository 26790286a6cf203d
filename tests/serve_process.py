"""A real ``dzone serve`` subprocess for tests: started on a free port, waited for on /readyz, ended by PID."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, context: ssl.SSLContext | None = None) -> int | None:
    """The status a GET gets (503 included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def status_json(base: str) -> dict[str, Any]:
    """The serve's /api/status (servers, readiness, draining)."""
    with urllib.request.urlopen(f"{base}/api/status", timeout=5) as answer:
        result: dict[str, Any] = json.load(answer)
        return result


def open_connections(base: str) -> int:
    """Open WebSocket connections, from /metrics (``/api/status`` says no more than the server-list)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("dzone_serve_connections "):
            return int(float(line.split()[1]))
    raise AssertionError("dzone_serve_connections missing from /metrics")


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    scheme: str  # "http" or "https"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve_process(
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    client_tls: ssl.SSLContext | None = None,
    port: int | None = None,
) -> Iterator[ServeProcess]:
    """``dzone serve`` with ``env`` added, on ``port`` (default: a free one); ``client_tls`` (trusting the
    test CA) when it serves TLS."""
    port = port or free_port()
    log = log_dir / f"serve-{port}.log"
    for n in itertools.count(2):  # a replacement on the same port keeps its own log
        if not log.exists():
            break
        log = log_dir / f"serve-{port}-{n}.log"
    full_env = {**os.environ, "DATABASE_URL": database_url, "DZONE_DRAIN_S": "0", **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dzone", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    serve = ServeProcess(process, port, log, "https" if client_tls else "http")
    try:
        deadline = time.monotonic() + 30
        while http_status(f"{serve.base}/readyz", client_tls) != 200:
            assert process.poll() is None, f"serve exited: {serve.output()}"
            assert time.monotonic() < deadline, f"serve not ready: {serve.output()}"
            time.sleep(0.05)  # polling a child process for readiness
        yield serve
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@asynccontextmanager
async def serve_process_async(
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> AsyncIterator[ServeProcess]:
    """:func:`serve_process` started and ended in a thread, so clients on the event loop keep running."""
    manager = serve_process(database_url, log_dir, env, port=port)
    serve = await asyncio.to_thread(manager.__enter__)
    try:
        yield serve
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def stops_accepting(serve: ServeProcess, timeout: float = 10.0) -> None:
    """Wait until nothing answers on the serve's port (a drain closes the listener at once)."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(http_status, f"{serve.base}/healthz") is not None:
        assert time.monotonic() < deadline, f"the draining serve kept accepting: {serve.output()}"
        await asyncio.sleep(0.05)  # polling another process's port
