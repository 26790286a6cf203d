"""``dzone ingest`` as a process: configuration errors, SIGTERM flushes and exits 0, no token in logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg

from simulator import SimConfig, Simulator
from tests.ingest_helpers import db_view, differences, free_port, truth_rows
from tests.waiting import wait_for

TOKEN = "very-secret-bot-token-123"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_BOT_TOKEN", "DATABASE_URL")}
    env.update(extra)
    return env


async def _dzone(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dzone"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_missing_token_is_a_clear_error() -> None:
    proc = await _dzone("ingest", env=_env(DATABASE_URL="postgresql://u@127.0.0.1:1/x"))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0 and b"DISCORD_BOT_TOKEN" in err, err


async def test_sigterm_flushes_and_exits_cleanly(database_url: str, conn: asyncpg.Connection) -> None:
    async with Simulator(SimConfig(guilds=2, members=40, seed=7, presence_rate=200, bot_token=TOKEN)) as sim:
        env = _env(
            DISCORD_BOT_TOKEN=TOKEN,
            DATABASE_URL=database_url,
            DZONE_DISCORD_API_BASE=sim.api_base,
            DZONE_DISCORD_GATEWAY_URL=sim.gateway_url,
            DZONE_GUILD_READY_TIMEOUT_S="0.1",
            DZONE_LOG_LEVEL="debug",
            DZONE_BATCH_MAX_DELAY_MS="200",
            DZONE_SHARD_COUNT="1",
            DZONE_SHARD_IDS="0",  # one value, not a list: one shard per process
            DZONE_INGEST_HTTP_PORT=str(port := free_port()),
        )
        proc = await _dzone("ingest", env=env)
        try:
            await wait_for(
                lambda: conn.fetchval("SELECT count(*) > 0 FROM discord_users"), timeout=30, message="rows"
            )
            await wait_for(
                lambda: _status(f"http://127.0.0.1:{port}/readyz", 200), timeout=30, message="ready"
            )
            sim.pause()  # no new events: after SIGTERM the table must equal the truth exactly
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = err.decode()
        assert proc.returncode == 0, log[-3000:]
        assert "ingest_stopped" in log and "flushed=True" in log
        assert TOKEN not in log
        assert not differences(truth_rows(sim.state()), await db_view(conn))


async def _status(url: str, expected: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status == expected
