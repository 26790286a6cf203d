"""Fixtures shared by every test: one real PostgreSQL per session, a fresh migrated database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.pg import PgServer, create_database, create_template, drop_database, test_server, with_database


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's PostgreSQL server (``pg.restart()`` works on the embedded one)."""
    with test_server() as server:
        create_template(server)
        yield server


@pytest.fixture
def database_url(pg: PgServer) -> Iterator[str]:
    """URL of a fresh database with the schema at head, dropped after the test."""
    name = create_database(pg)
    try:
        yield with_database(pg.admin_url, name)
    finally:
        drop_database(pg, name)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's database."""
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        yield connection
    finally:
        await connection.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's convergence times, when it ran (tests/cluster.py records them)."""
    import sys

    cluster = sys.modules.get("tests.cluster")
    figures = getattr(cluster, "CONVERGENCE", None)
    if not figures:
        return
    terminalreporter.section("fault suite: seconds to converge after the pause")
    for fault, seconds in figures:
        terminalreporter.write_line(f"{fault:28} {'never' if seconds is None else f'{seconds:.2f}s'}")
