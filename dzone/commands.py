"""``dzone migrate`` and ``dzone localdb``: the database commands of the CLI."""

from __future__ import annotations

import contextlib
import signal
import threading

import click
from sqlalchemy.exc import SQLAlchemyError

from dzone.localdb import LocalDBError, LocalPostgres
from shared.db import DATABASE_ERRORS, describe_connect_error, redacted
from shared.db import migrate as run_migrations
from shared.settings import ConfigError, DatabaseSettings, load


@click.command()
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(sql: bool, revision: str) -> None:
    """Upgrade the database at DATABASE_URL (DATABASE_DIRECT_URL when set) to the latest schema."""
    try:
        settings = load(DatabaseSettings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    url = settings.session_url
    if url is None:
        if not sql:
            raise click.ClickException("DATABASE_URL is not set (try: dzone localdb, then export its URL)")
        url = "postgresql://offline/dzone"  # --sql renders without connecting
    try:
        run_migrations(url, revision, sql=sql, pooler=settings.session_pooler)
    except (SQLAlchemyError, *DATABASE_ERRORS) as exc:
        raise click.ClickException(f"migrating {redacted(url)} failed: {_database_error(exc)}") from None
    if not sql:
        click.echo(f"database at {redacted(url)} is at revision {revision}", err=True)


def _database_error(exc: BaseException) -> str:
    """The driver's own error under SQLAlchemy's wrapping, in one line."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the adapted driver error
    if isinstance(orig, BaseException):
        exc = orig.__cause__ if isinstance(orig.__cause__, DATABASE_ERRORS) else orig
    return describe_connect_error(exc)


@click.command()
@click.option("--port", type=int, default=None, help="TCP port (default: a free one).")
@click.option("--no-migrate", is_flag=True, help="Leave the database empty.")
def localdb(port: int | None, no_migrate: bool) -> None:
    """Run a throwaway PostgreSQL in the foreground, migrated, and print its URL; Ctrl-C removes it."""
    try:
        with LocalPostgres(port=port) as server:
            if not no_migrate:
                run_migrations(server.url)
            click.echo(server.url)
            click.echo(
                f"export DATABASE_URL={server.url}   # Ctrl-C stops the server and deletes its files",
                err=True,
            )
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
                stop.wait()
    except LocalDBError as exc:
        raise click.ClickException(str(exc)) from None
