"""The real PostgreSQL behind the tests: chosen once per session, cloned per test from a migrated template.

Order: ``DATABASE_URL`` if set (its role needs CREATEDB); a testcontainers PostgreSQL when a Docker
engine answers within ~2 s; else the embedded launcher (shared/localdb.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.db import migrate
from shared.localdb import LocalPostgres

TEMPLATE = "dzone_template"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@dataclass
class PgServer:
    """A PostgreSQL server for the test session; ``local`` is set when we started it ourselves."""

    admin_url: str
    local: LocalPostgres | None = None

    def restart(self, down_s: float = 0.0) -> None:
        if self.local is None:
            raise RuntimeError("restart needs the embedded server (unset DATABASE_URL)")
        self.local.restart(down_s)


def _docker_answers() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        docker.from_env(timeout=2).ping()
    except Exception:  # any failure means "no usable engine", which is the answer we want
        return False
    return True


@contextlib.contextmanager
def test_server() -> Iterator[PgServer]:
    if url := os.environ.get("DATABASE_URL"):
        yield PgServer(admin_url=url)
        return
    if os.environ.get("DZONE_TEST_DOCKER", "auto") != "never" and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as container:
            yield PgServer(admin_url=container.get_connection_url())
        return
    with LocalPostgres() as local:
        yield PgServer(admin_url=local.url, local=local)


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def create_template(server: PgServer) -> None:
    asyncio.run(
        _admin(server.admin_url, f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}")
    )
    migrate(with_database(server.admin_url, TEMPLATE))


def create_database(server: PgServer) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server.admin_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    return name


def drop_database(server: PgServer, name: str) -> None:
    asyncio.run(_admin(server.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
