"""One place for reaching PostgreSQL: URL forms, connections, pools and the schema's migrations.

Both processes use asyncpg directly; SQLAlchemy appears only as alembic's engine, and reaches the
database through asyncpg with the same options (so ``sslmode``, ``sslrootcert``… in the URL hold for
every connection of every process). docs/postgres.md: poolers, TLS, application names.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.feed import LISTENER_APPLICATION_NAME

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
MIGRATIONS = PROJECT_ROOT / "migrations"

# What sits between the processes and PostgreSQL (DZONE_DATABASE_POOLER). "transaction": a pooler that
# hands a server connection to a client per transaction (PgBouncer pool_mode=transaction, Supabase's
# port 6543, RDS Proxy), where a named prepared statement may land on a backend that never saw it.
Pooler = Literal["none", "transaction"]

# The application_name of each kind of connection, as pg_stat_activity and `dzone status` show them.
APP_INGEST = "dzone-ingest"  # the writer's connection: batches, guild ops, messages, heartbeats
APP_INGEST_SYNC = "dzone-ingest-sync"  # the extra lanes of concurrent full syncs
APP_INGEST_COMMANDS = "dzone-ingest-commands"  # the /dzone commands' small pool (ingest/commands.py)
APP_SERVE = "dzone-serve"  # the serve's pool: reads and the feed probe's NOTIFY
APP_LISTENER = LISTENER_APPLICATION_NAME  # the serve's LISTEN connection
APP_MIGRATE = "dzone-migrate"
APP_STATUS = "dzone-status"

# What asyncpg's named prepared statements run into behind a transaction pooler not declared as one.
POOLER_ERRORS = (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError)
POOLER_HINT = "behind a transaction pooler? set DZONE_DATABASE_POOLER=transaction (docs/postgres.md)"

# The database failed us: unreachable, refusing the login, too slow, the connection lost, or the statement
# refused (TLS refusals are OSError subclasses). Every caller that reports "the database" catches these.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


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


def connect_options(application_name: str, pooler: Pooler = "none") -> dict[str, Any]:
    """Keyword arguments of ``asyncpg.connect`` / ``create_pool`` for one kind of connection.

    Behind a transaction pooler asyncpg's statement cache is off: its named statements would be
    prepared on one backend and executed on another. Unnamed ones are safe: asyncpg sends the parse
    and the execute before one Sync, which a pooler never splits.
    """
    options: dict[str, Any] = {"server_settings": {"application_name": application_name}}
    if pooler == "transaction":
        options["statement_cache_size"] = 0
    return options


def describe_connect_error(exc: BaseException) -> str:
    """One line saying why a connection failed (no traceback): TLS, refusal, login or timeout."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate was not accepted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        return f"TLS: {exc} (the server has no TLS: lower sslmode or turn ssl on in postgresql.conf)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, POOLER_ERRORS):
        text += f" ({POOLER_HINT})"
    return f"{type(exc).__name__}: {text}"


async def connect(
    url: str,
    *,
    timeout: float = 10.0,
    application_name: str = "dzone",
    pooler: Pooler = "none",
    command_timeout: float | None = None,
) -> asyncpg.Connection:
    """A single connection, e.g. the dedicated LISTEN connection (a pool's reset would UNLISTEN).

    ``application_name`` is what operators see in ``pg_stat_activity`` (``dzone status`` looks for it).
    """
    return await asyncpg.connect(
        url, timeout=timeout, command_timeout=command_timeout, **connect_options(application_name, pooler)
    )


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
    application_name: str = "dzone",
    pooler: Pooler = "none",
) -> asyncpg.Pool:
    """A connection pool with a connect timeout and a per-statement timeout as defaults."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=60.0,
        **connect_options(application_name, pooler),
    )
    assert pool is not None
    return pool


def alembic_connect_args(url: str, pooler: Pooler = "none") -> dict[str, Any]:
    """SQLAlchemy ``connect_args`` that hand the whole libpq URL to asyncpg (SQLAlchemy would pass
    ``sslmode`` and friends on as unknown keywords), with the same options as every other connection."""
    args = {"dsn": url, **connect_options(APP_MIGRATE, pooler)}
    if pooler == "transaction":
        # SQLAlchemy prepares named statements itself: unique names, so two clients sharing a backend
        # through the pooler never collide, and no cache of them.
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__dzone_{uuid.uuid4().hex}__"
    return args


def alembic_config(url: str, pooler: Pooler = "none") -> object:
    """An alembic Config for this project's migrations against ``url`` (a libpq URL)."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read '%' in a password as a reference.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    config.attributes["dzone_url"] = url
    config.attributes["dzone_pooler"] = pooler
    return config


def migrate(url: str, revision: str = "head", *, sql: bool = False, pooler: Pooler = "none") -> None:
    """Upgrade the database at ``url`` to ``revision`` (or print the SQL when ``sql``)."""
    from alembic import command

    command.upgrade(alembic_config(url, pooler), revision, sql=sql)  # type: ignore[arg-type]


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)  # type: ignore[arg-type]
