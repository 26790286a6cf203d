"""No secret in any log: each failure path that once printed one, forced, in both formats, rich installed.

The paths: a wrong bot token, a 503 from Discord at login, a database refusing the password, a viewer's
OAuth token refused by Discord. Each runs the real ``dzone`` process with every secret of a deployment
in its environment (bot token, database password inside DATABASE_URL and as PGPASSWORD) and asserts
that none of them appears in what it wrote. Some runs also ask for tracebacks with local variables
(DZONE_LOG_TRACEBACK_LOCALS), where the secrets are certainly in the frames: they must show redacted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import structlog
from websockets.asyncio.client import connect

from shared import logs, redaction
from simulator import SimConfig, Simulator
from simulator.rest import RestFault
from tests.pg import _admin
from tests.serve_process import free_port, serve_process
from tests.test_compose import _require_password_for
from tests.test_serve_oauth import FAILED, LOCKED, seed
from tests.test_serve_support import Viewer
from tests.waiting import wait_for

BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GsecrT.bot-token-that-must-never-be-printed"
WRONG_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GwrOng.wrong-token-that-must-never-be-printed"
DB_PASSWORD = "db-pass/w%rd:that@never-shows"
WRONG_DB_PASSWORD = "wrong-db-pass/w%rd:never-shown"
VIEWER_TOKEN = "viewerOAuthTokenRefusedByDiscord0042"
FORMATS = ("console", "json")


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _environment(fmt: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DZONE_", "DISCORD_", "PG"))}
    return {**env, "DZONE_LOG_FORMAT": fmt, "DZONE_LOG_LEVEL": "debug", "PGPASSWORD": DB_PASSWORD, **extra}


async def _dzone(
    *args: str, env: dict[str, str], until: str | None = None, timeout: float = 90
) -> tuple[int, str]:
    """Run ``dzone ARGS`` to its end, or until it has written ``until`` (then SIGTERM): its exit code and
    everything it wrote (stdout and stderr)."""
    with tempfile.TemporaryFile() as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dzone", *args, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )

        def written() -> str:
            out.seek(0)
            return out.read().decode(errors="replace")

        try:
            if until is not None:
                await wait_for(
                    lambda: process.returncode is not None or until in written(),
                    timeout=timeout,
                    interval=0.1,
                    message=f"{until!r} in the output of dzone {args[0]}",
                )
                if process.returncode is None:
                    process.terminate()
            await asyncio.wait_for(process.wait(), timeout)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, written()


def _assert_no_secret(output: str, *secrets: str) -> None:
    for secret in secrets:
        for form in redaction._written_forms(secret):
            assert form not in output, f"the secret {secret!r} was printed (as {form!r}):\n{output[-4000:]}"


def test_rich_is_installed_so_these_tests_cover_it() -> None:
    # rich's tracebacks print every frame's locals: the leak these tests guard against needs it present.
    assert importlib.util.find_spec("rich") is not None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_locals", [False, True], ids=["plain", "locals"])
async def test_a_wrong_bot_token(database_url: str, fmt: str, with_locals: bool) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, bot_token=BOT_TOKEN)) as sim:
        env = _environment(
            fmt,
            DATABASE_URL=_with_password(database_url, DB_PASSWORD),
            DISCORD_BOT_TOKEN=WRONG_TOKEN,
            DZONE_DISCORD_API_BASE=sim.api_base,
            DZONE_DISCORD_GATEWAY_URL=sim.gateway_url,
            DZONE_INGEST_HTTP_PORT=str(free_port()),
            DZONE_LOG_TRACEBACK_LOCALS="1" if with_locals else "0",
        )
        code, output = await _dzone("ingest", env=env)
    assert code != 0, output
    assert "Improper token" in output or "401" in output, output[-3000:]
    _assert_no_secret(output, WRONG_TOKEN, BOT_TOKEN, DB_PASSWORD)
    if with_locals:  # the token was in the frames' locals: shown redacted
        assert redaction.REPLACEMENT in output


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_locals", [False, True], ids=["plain", "locals"])
async def test_discord_503_at_login(database_url: str, fmt: str, with_locals: bool) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, bot_token=BOT_TOKEN)) as sim:
        sim.queue_rest_faults([RestFault(503)] * 20)
        env = _environment(
            fmt,
            DATABASE_URL=_with_password(database_url, DB_PASSWORD),
            DISCORD_BOT_TOKEN=BOT_TOKEN,
            DZONE_DISCORD_API_BASE=sim.api_base,
            DZONE_DISCORD_GATEWAY_URL=sim.gateway_url,
            DZONE_INGEST_HTTP_PORT=str(free_port()),
            DZONE_LOG_TRACEBACK_LOCALS="1" if with_locals else "0",
        )
        code, output = await _dzone("ingest", env=env)
    assert code != 0, output
    assert "503" in output, output[-3000:]
    _assert_no_secret(output, BOT_TOKEN, DB_PASSWORD)
    if with_locals:
        assert redaction.REPLACEMENT in output


@contextmanager
def _password_role(pg: Any) -> Iterator[str]:
    """A role that must give its password (scram) on the embedded server; its libpq URL, no password."""
    role = "dzone_secret_check"
    if not _require_password_for(pg, role):
        pytest.skip("needs the embedded test server (it makes this role check its password)")
    escaped = DB_PASSWORD.replace("'", "''")
    asyncio.run(
        _admin(pg.admin_url, f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN PASSWORD '{escaped}'")
    )
    try:
        parts = urlsplit(pg.admin_url)
        yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    finally:
        asyncio.run(_admin(pg.admin_url, f"DROP ROLE IF EXISTS {role}"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", ["migrate", "ingest", "serve"])
async def test_a_refused_database_password(pg: Any, fmt: str, command: str) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, bot_token=BOT_TOKEN)) as sim:
        await asyncio.to_thread(_refused_database_password, pg, fmt, command, sim)


def _refused_database_password(pg: Any, fmt: str, command: str, sim: Simulator) -> None:
    with _password_role(pg) as url:
        assert asyncio.run(_login(_with_password(url, DB_PASSWORD)))  # the right password is accepted
        for env in (
            # the wrong password in the URL, the right one as PGPASSWORD (which the URL's overrides)
            _environment(fmt, DATABASE_URL=_with_password(url, WRONG_DB_PASSWORD)),
            # no password in the URL (as under compose), the wrong one as PGPASSWORD
            {**_environment(fmt, DATABASE_URL=url), "PGPASSWORD": WRONG_DB_PASSWORD},
        ):
            env.update(
                DISCORD_BOT_TOKEN=BOT_TOKEN,
                DZONE_DISCORD_API_BASE=sim.api_base,
                DZONE_DISCORD_GATEWAY_URL=sim.gateway_url,
                DZONE_INGEST_HTTP_PORT=str(free_port()),
                DZONE_LOG_TRACEBACK_LOCALS="1",
            )
            args = ["serve", "--port", str(free_port())] if command == "serve" else [command]
            _, output = asyncio.run(_dzone(*args, env=env, until="password authentication failed"))
            assert "password authentication failed" in output, output[-3000:]
            _assert_no_secret(output, WRONG_DB_PASSWORD, DB_PASSWORD, BOT_TOKEN)


async def _login(url: str) -> bool:
    conn = await asyncpg.connect(url, timeout=10)
    await conn.close()
    return True


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_viewer_token_refused_by_discord(
    database_url: str, conn: asyncpg.Connection, fmt: str, tmp_path: Path
) -> None:
    async with Simulator(SimConfig(guilds=1, members=5, bot_token=BOT_TOKEN)) as sim:
        await seed(conn, "200000000000000001")
        env = _environment(
            fmt,
            DZONE_DISCORD_API_BASE=sim.api_base,
            DZONE_LOG_TRACEBACK_LOCALS="1",
            PGPASSWORD=DB_PASSWORD,
        )
        with serve_process(_with_password(database_url, DB_PASSWORD), tmp_path, env=env) as serve:
            async with connect(serve.ws_url, open_timeout=10) as ws:
                viewer = Viewer(ws)
                await viewer.expect("server-list")
                answer = await viewer.connect(LOCKED, discordToken=VIEWER_TOKEN)
                assert answer["data"]["message"] == FAILED
                assert sim.oauth_calls == 1  # Discord was asked, and refused
            output = serve.output()
    assert "discord_auth_refused" in output
    _assert_no_secret(output, VIEWER_TOKEN, DB_PASSWORD)


def test_every_rendered_line_is_redacted_whatever_printed_it(capsys: pytest.CaptureFixture[str]) -> None:
    """In-process, both formats: a secret in a message, a field, an exception and a local variable."""
    redaction.add("in-process-secret-value")
    redaction.add_transient(VIEWER_TOKEN)
    try:
        for fmt in FORMATS:
            logs.configure("info", fmt, traceback_locals=True)  # type: ignore[arg-type]
            secret = "in-process-secret-value"
            try:
                raise RuntimeError(f"failed with {secret} and {VIEWER_TOKEN}.")
            except RuntimeError:
                structlog.get_logger("t").exception("failure", token=secret, url=f"pg://u:{secret}@h/d")
            logging.getLogger("library").error("library says %s", secret)
            err = capsys.readouterr().err
            assert err.count(redaction.REPLACEMENT) >= 5, err
            assert secret not in err and VIEWER_TOKEN not in err, err
    finally:
        redaction.SECRETS.clear()
        structlog.reset_defaults()
