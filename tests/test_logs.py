"""shared/logs.py: JSON lines keep the formatted exception (structlog's and stdlib loggers' alike)."""

from __future__ import annotations

import subprocess
import sys

import orjson

SCRIPT = """
import logging, structlog
from shared import logs
logs.configure("info", "json")
def explode():
    raise ValueError("boom-structlog")
try:
    explode()
except ValueError:
    structlog.get_logger("t").exception("structlog_failure", server="42")
try:
    raise KeyError("boom-stdlib")
except KeyError:
    logging.getLogger("library").exception("library failure")
"""


def test_json_logs_carry_the_traceback_text():
    # A child process: configure() replaces the root handlers and caches loggers process-wide.
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["structlog_failure", "library failure"]
    first, second = lines
    assert first["server"] == "42" and first["level"] == "error"
    assert "Traceback (most recent call last)" in first["exception"]
    assert "in explode" in first["exception"] and "ValueError: boom-structlog" in first["exception"]
    assert "KeyError: 'boom-stdlib'" in second["exception"]
    assert "traceback object" not in done.stderr
