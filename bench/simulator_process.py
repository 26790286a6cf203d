"""Start ``dzone simulate`` in its own process for a benchmark, paused, and read the URLs it prints."""

from __future__ import annotations

import os
import subprocess
import sys

UNBOUNDED_RATE = 10_000_000.0  # far above what anything can take: backpressure sets the pace


def start_simulator(members: int, presence_rate: float = 0) -> tuple[subprocess.Popen[str], str, str]:
    """One guild of ``members``; presence_rate 0 means unbounded. Returns the process, REST base, gateway."""
    command = [
        sys.executable, "-m", "dzone", "simulate", "--port", "0", "--guild-sizes", str(members),
        "--presence-rate", str(presence_rate or UNBOUNDED_RATE), "--message-rate", "0", "--churn", "0",
        "--paused", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert process.stdout is not None
    api_base = process.stdout.readline().strip().split("=", 1)[1]
    gateway_url = process.stdout.readline().strip().split("=", 1)[1]
    return process, api_base, gateway_url
