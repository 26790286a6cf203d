"""One place for reaching PostgreSQL: URL forms, connections, pools and the schema's migrations.

Both processes use asyncpg directly; SQLAlchemy appears only as alembic's engine.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
MIGRATIONS = PROJECT_ROOT / "migrations"


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a libpq URL, bound to the asyncpg driver."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(url: str, *, timeout: float = 10.0, application_name: str = "dzone") -> asyncpg.Connection:
    """A single connection, e.g. the dedicated LISTEN connection (a pool's reset would UNLISTEN).

    ``application_name`` is what operators see in ``pg_stat_activity`` (``dzone status`` looks for it).
    """
    return await asyncpg.connect(url, timeout=timeout, server_settings={"application_name": application_name})


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0, application_name: str = "dzone"
) -> asyncpg.Pool:
    """A connection pool with a connect timeout and a per-statement timeout as defaults."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=60.0,
        server_settings={"application_name": application_name},
    )
    assert pool is not None
    return pool


def alembic_config(url: str) -> object:
    """An alembic Config for this project's migrations against ``url`` (a libpq URL)."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read '%' in a password as a reference.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head", *, sql: bool = False) -> None:
    """Upgrade the database at ``url`` to ``revision`` (or print the SQL when ``sql``)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision, sql=sql)  # type: ignore[arg-type]


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)  # type: ignore[arg-type]
