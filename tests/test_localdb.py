"""The embedded PostgreSQL launcher: starts as root (via an unprivileged user) and as a normal user,
and leaves nothing behind."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from dzone.localdb import LocalPostgres, find_bindir

PROJECT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, subprocess, sys, time
from dzone.localdb import LocalPostgres
started = time.monotonic()
server = LocalPostgres().start()
ready_s = time.monotonic() - started
answer = subprocess.run(["psql", server.url, "-XAtc", "select current_user"], capture_output=True, text=True)
print(json.dumps({"pid": server.pid, "dir": str(server.directory), "ready_s": ready_s,
                  "answer": answer.stdout.strip()}), flush=True)
server.stop()
"""


def _run_launcher(python: str = sys.executable, path: Path = PROJECT, **kwargs: object) -> dict[str, object]:
    result = subprocess.run(
        [python, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path,
        env={**os.environ, "PYTHONPATH": str(path)},
        **kwargs,
    )  # type: ignore[call-overload]
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _assert_nothing_left(report: dict[str, object]) -> None:
    assert report["answer"] == "dzone"
    assert not psutil.pid_exists(int(report["pid"]))  # type: ignore[call-overload]
    assert not Path(str(report["dir"])).exists()


def test_launcher_as_current_user_leaves_nothing_behind() -> None:
    report = _run_launcher()
    _assert_nothing_left(report)
    print(f"embedded PostgreSQL ready in {report['ready_s']:.2f}s")


def _runs(python: str, as_user: dict[str, object]) -> bool:
    try:
        done = subprocess.run([python, "-c", "pass"], check=False, capture_output=True, timeout=30, **as_user)  # type: ignore[call-overload]
    except PermissionError:
        return False
    return bool(done.returncode == 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_launcher_as_unprivileged_user_leaves_nothing_behind() -> None:
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = pwd.getpwnam("nobody")
    as_user: dict[str, object] = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    # The launcher needs only the standard library, so any interpreter that user may run will do
    # (a virtualenv under /root is out of its reach).
    usable = [python for python in (sys.executable, "/usr/bin/python3") if _runs(python, as_user)]
    if not usable:
        pytest.skip(f"no Python interpreter that {user.pw_name} may run")
    # Nor may it read a checkout in a private folder (pytest's tmp_path is one too): give it a copy of
    # the launcher, which needs only the error base besides, in a folder of its own.
    copy = Path(tempfile.mkdtemp(prefix="dzone-launcher-"))
    try:
        for package, names in (
            ("dzone", ("__init__.py", "localdb.py")),
            ("shared", ("__init__.py", "errors.py")),
        ):
            (copy / package).mkdir()
            for name in names:
                shutil.copy(PROJECT / package / name, copy / package / name)
            (copy / package).chmod(0o755)
        copy.chmod(0o755)
        report = _run_launcher(usable[0], copy, **as_user)
    finally:
        shutil.rmtree(copy)
    _assert_nothing_left(report)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the switch")
def test_as_root_the_server_runs_as_an_unprivileged_user() -> None:
    with LocalPostgres() as server:
        assert server.pid is not None
        assert psutil.Process(server.pid).uids().real != 0


def test_restart_keeps_the_port_and_the_data() -> None:
    with LocalPostgres() as server:
        subprocess.run(["psql", server.url, "-Xqc", "create table kept (x int)"], check=True, timeout=30)
        port, first_pid = server.port, server.pid
        started = time.monotonic()
        server.restart()
        assert time.monotonic() - started < 30
        assert server.port == port and server.pid != first_pid
        out = subprocess.run(
            ["psql", server.url, "-XAtc", "select count(*) from kept"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert out.strip() == "0"


def test_pg_bindir_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_bindir()
    monkeypatch.setenv("PG_BINDIR", str(real))
    assert find_bindir() == real
    monkeypatch.setenv("PG_BINDIR", "/nonexistent")  # a wrong hint falls through to the other places
    assert find_bindir() == real
