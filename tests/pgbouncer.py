"""Debian's PgBouncer in front of the test PostgreSQL, in a temporary directory, as the tests start it.

PgBouncer refuses to run as root, so as root it runs as the same unprivileged account as the embedded
PostgreSQL (dzone/localdb.py). ``auth_type = any`` lets every client in as the ``user=`` of its database
line, so no password file is needed. :meth:`PgBouncer.restart` stops it at once (SIGTERM: every client and
server connection dropped) and starts it again on the same port: the fault suite's ``pooler-restart``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from dzone.localdb import _unprivileged_user
from tests.serve_process import free_port

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def config(target_url: str, port: int, directory: Path, pool_mode: str) -> str:
    """pgbouncer.ini for one database of the target server, listening on loopback ``port``."""
    target = urlsplit(target_url)
    database = target.path.lstrip("/")
    return (
        "[databases]\n"
        f"{database} = host={target.hostname} port={target.port} dbname={database} user={target.username}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\n"
        f"pool_mode = {pool_mode}\n"
        "max_client_conn = 500\ndefault_pool_size = 20\n"
        f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )


@dataclass
class PgBouncer:
    """One running PgBouncer; :attr:`url` reaches the target database through it."""

    target_url: str
    pool_mode: str = "transaction"
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dzone-pgbouncer-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        parts = urlsplit(self.target_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}"))

    def start(self) -> None:
        user = _unprivileged_user()
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(config(self.target_url, self.port, self.directory, self.pool_mode))
        as_user: dict[str, Any] = {}
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            os.chown(ini, user.pw_uid, user.pw_gid)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [BINARY, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.process.returncode}: {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)  # polling the port until it listens
        raise RuntimeError(f"pgbouncer not listening after {timeout}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM: PgBouncer closes every client and server connection and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def pgbouncer(target_url: str, pool_mode: str = "transaction") -> Iterator[PgBouncer]:
    """A PgBouncer in front of ``target_url``'s database; skipped where Debian's pgbouncer is missing."""
    if not Path(BINARY).is_file():
        pytest.skip("pgbouncer is not installed (.ci/apt-packages.txt)")
    bouncer = PgBouncer(target_url, pool_mode)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.directory, ignore_errors=True)
