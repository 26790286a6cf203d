"""The real PostgreSQL behind the tests: chosen once per session, cloned per test from a migrated template.

Order: ``DATABASE_URL`` if set (its role needs CREATEDB); a testcontainers PostgreSQL when a Docker
engine answers within ~2 s; else the embedded launcher (dzone/localdb.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dzone.localdb import LocalPostgres
from shared.db import migrate

TEMPLATE = "dzone_template"
T = TypeVar("T")

# pg_hba.conf while logins are refused: every connection type, every user, every database.
REJECT_ALL_HBA = "local all all reject\nhost all all 0.0.0.0/0 reject\nhost all all ::/0 reject\n"
TERMINATE_OTHER_BACKENDS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


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

    @contextlib.contextmanager
    def refuse_logins(self, timeout: float = 10.0) -> Iterator[None]:
        """While inside, the server refuses every login (pg_hba ``reject``) and has no client session left.

        Blocking (a few ms): a sync context manager, usable in async tests. An admin connection opened
        before the reject terminates the sessions and, on exit, restores pg_hba.conf and reloads it;
        both ends wait until a new login is refused, then accepted again.
        """
        if self.local is None:
            raise RuntimeError("refuse_logins needs the embedded server (unset DATABASE_URL)")
        hba = self.local.directory / "data" / "pg_hba.conf"
        original = hba.read_text()
        with _LoopThread() as loop:
            admin = loop.run(asyncpg.connect(self.admin_url, timeout=timeout))
            try:
                hba.write_text(REJECT_ALL_HBA)
                loop.run(admin.execute("SELECT pg_reload_conf()"))
                loop.run(self._wait_login(accepted=False, timeout=timeout))
                loop.run(admin.fetchval(TERMINATE_OTHER_BACKENDS))
                yield
            finally:
                hba.write_text(original)
                loop.run(admin.execute("SELECT pg_reload_conf()"))
                loop.run(self._wait_login(accepted=True, timeout=timeout))
                loop.run(admin.close())

    async def _wait_login(self, *, accepted: bool, timeout: float) -> None:
        """Poll new logins until they are ``accepted`` (or refused): the reload is asynchronous."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.admin_url, timeout=timeout)
            except asyncpg.InvalidAuthorizationSpecificationError:
                if not accepted:
                    return
            else:
                await conn.close()
                if accepted:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"logins not {'accepted' if accepted else 'refused'} after {timeout}s")
            await asyncio.sleep(0.01)


class _LoopThread:
    """An event loop on its own thread, to run a few coroutines from sync code inside a running loop."""

    def __enter__(self) -> _LoopThread:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-admin", daemon=True)
        self.thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __exit__(self, *_exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


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
