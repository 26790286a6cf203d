"""TLS to PostgreSQL: ``sslmode`` / ``sslrootcert`` in ``DATABASE_URL`` hold for every connection of every
process (the ingest's writer, the serve's pool and LISTEN, alembic, ``dzone status``), and a wrong CA or
``verify-full`` against a server without TLS fails in one clear line, no traceback.

A PostgreSQL of this module's own runs with ``ssl = on``, a certificate of a test CA (tests/certs.py) and a
pg_hba.conf that rejects every connection not over TLS, so a connection that ignored the URL's TLS
parameters would be refused rather than pass unnoticed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from dzone.localdb import LocalPostgres, _unprivileged_user
from serve import WebSocketServer
from serve.api import ServeError
from simulator import SimConfig, Simulator
from tests.certs import LocalCA
from tests.test_ingest_gateway import running_worker, wait_equal
from tests.test_serve_support import settings
from tests.waiting import wait_for

DZONE = str(Path(sys.executable).parent / "dzone")
TLS_ONLY_HBA = (
    "local all all trust\n"
    "hostssl all dzone_pw 127.0.0.1/32 scram-sha-256\n"
    "hostssl all all 127.0.0.1/32 trust\n"
    "hostnossl all all 127.0.0.1/32 reject\n"
    "host all all ::1/128 reject\n"
)


def with_tls(url: str, mode: str, ca_file: Path | None = None) -> str:
    query = f"sslmode={mode}" + (f"&sslrootcert={quote(str(ca_file))}" if ca_file else "")
    return f"{url}?{query}"


class TlsPostgres:
    def __init__(self, server: LocalPostgres, ca: LocalCA) -> None:
        self.server = server
        self.ca = ca

    def url(self, mode: str = "verify-full", ca_file: Path | None = None) -> str:
        return with_tls(self.server.url, mode, ca_file or self.ca.ca_file)


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    ca = LocalCA(tmp_path_factory.mktemp("pg-ca"))
    pair = ca.issue("postgres")
    with LocalPostgres() as server:
        data = server.directory / "data"
        for source, target in ((pair.cert_file, "server.crt"), (pair.key_file, "server.key")):
            shutil.copy(source, data / target)
            user = _unprivileged_user()
            if user is not None:
                os.chown(data / target, user.pw_uid, user.pw_gid)
            (data / target).chmod(0o600)
        (data / "pg_hba.conf").write_text(TLS_ONLY_HBA)

        async def turn_tls_on() -> None:
            conn = await asyncpg.connect(server.url, timeout=10)
            try:
                await conn.execute("ALTER SYSTEM SET ssl = on")
                await conn.execute("CREATE ROLE dzone_pw LOGIN PASSWORD 'right'")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        asyncio.run(turn_tls_on())
        yield TlsPostgres(server, ca)


def _dzone(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DZONE_"))}
    return subprocess.run(
        [DZONE, *args], env={**base, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def _ssl_of(url: str, application_name: str) -> list[bool]:
    """Whether each session of ``application_name`` runs over TLS (pg_stat_ssl)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = $1",
            application_name,
        )
        return [r["ssl"] for r in rows]
    finally:
        await conn.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_every_process_connects_over_tls(tls_pg: TlsPostgres, mode: str) -> None:
    url = tls_pg.url(mode)
    a_plain_login = asyncpg.connect(tls_pg.server.url + "?sslmode=disable", timeout=10)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await a_plain_login  # the server takes TLS only: whatever works below went over TLS
    migrated = await asyncio.to_thread(_dzone, "migrate", DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    async with Simulator(SimConfig(guilds=2, members=30, seed=5)) as sim:
        async with running_worker(sim, url, sync_connections=2):
            conn = await asyncpg.connect(url, timeout=10)
            try:
                await wait_equal(conn, sim)
            finally:
                await conn.close()
            assert await _ssl_of(url, "dzone-ingest") == [True]
        serve = WebSocketServer(port=0, host="127.0.0.1", settings=settings(url))
        await serve.open()
        try:
            await wait_for(lambda: serve.readiness()[0], 15, message="the serve proves its feed over TLS")
            assert set(await _ssl_of(url, "dzone-serve-listener")) == {True}
            assert set(await _ssl_of(url, "dzone-serve")) == {True}
            shown = await asyncio.to_thread(_dzone, "status", DATABASE_URL=url)
            assert shown.returncode == 0, shown.stderr
            assert "live (" in shown.stdout, shown.stdout  # status's own LISTEN, over TLS, heard the serve
        finally:
            await serve.close()


async def test_a_wrong_ca_fails_in_one_clear_line(tls_pg: TlsPostgres, tmp_path: Path) -> None:
    other = LocalCA(tmp_path / "other-ca")
    url = tls_pg.url("verify-full", other.ca_file)
    for command in ("migrate", "status"):
        line = _one_line_error(await asyncio.to_thread(_dzone, command, DATABASE_URL=url))
        assert "TLS: the server's certificate was not accepted" in line, line
    serve = WebSocketServer(port=0, host="127.0.0.1", settings=settings(url))
    with pytest.raises(ServeError, match="TLS: the server's certificate was not accepted"):
        await serve.open()


async def test_verify_full_against_a_server_without_tls_fails_in_one_clear_line(
    database_url: str, tls_pg: TlsPostgres
) -> None:
    url = with_tls(database_url, "verify-full", tls_pg.ca.ca_file)  # the session's PostgreSQL: no TLS
    for command in ("migrate", "status"):
        line = _one_line_error(await asyncio.to_thread(_dzone, command, DATABASE_URL=url))
        assert "the server has no TLS" in line, line


def test_migrate_with_a_wrong_password_says_so_in_one_line(tls_pg: TlsPostgres) -> None:
    url = tls_pg.url().replace("//dzone@", "//dzone_pw:wrong@")
    line = _one_line_error(_dzone("migrate", DATABASE_URL=url))
    assert 'password authentication failed for user "dzone_pw"' in line, line
    assert "wrong" not in line  # the password is never printed
