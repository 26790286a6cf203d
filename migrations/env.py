"""Alembic environment: runs migrations over asyncpg, the one driver of the project.

The URL comes from the ``sqlalchemy.url`` option when a caller set it (``dzone migrate`` does), else
from ``DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import Pooler, alembic_connect_args, sqlalchemy_url
from shared.settings import DatabaseSettings, load

config = context.config


def _target() -> tuple[str, Pooler]:
    """The libpq URL and pooler mode: as ``dzone migrate`` set them, else from the environment."""
    url = config.attributes.get("dzone_url")
    if url:
        return str(url), config.attributes.get("dzone_pooler", "none")
    settings = load(DatabaseSettings)
    if settings.session_url is None:
        raise SystemExit("DATABASE_URL is not set: point it at the database to migrate")
    return settings.session_url, settings.session_pooler


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or sqlalchemy_url(_target()[0])


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    url, pooler = _target()
    # The whole libpq URL goes to asyncpg (TLS parameters included); SQLAlchemy's own URL stays bare.
    engine = create_async_engine(
        "postgresql+asyncpg://", poolclass=pool.NullPool, connect_args=alembic_connect_args(url, pooler)
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
