"""``dzone serve``: run the WebSocket + HTTP server (TLS with ``DZONE_TLS_*``) until SIGTERM/SIGINT.

The first signal drains for ``DZONE_DRAIN_S`` (docs/deploy.md), a second ends the drain; exit 0 either way.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from shared import logs
from shared.settings import ConfigError, ServeSettings, load


@click.command()
@click.option(
    "--host", default=None, envvar="DZONE_HOST", show_envvar=True, help="Address to bind (default 127.0.0.1)."
)
@click.option(
    "--port",
    type=int,
    default=None,
    envvar="DZONE_PORT",
    show_envvar=True,
    help="Port for HTTP and WebSocket (default 3000).",
)
@click.option(
    "--static-dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="DZONE_STATIC_DIR",
    show_envvar=True,
    help="Serve this directory (a d-zone build) at / instead of the built-in live view.",
)
def serve(host: str | None, port: int | None, static_dir: Path | None) -> None:
    """Serve d-zone viewers from PostgreSQL (DATABASE_URL) and relay the change feed to them.

    SIGTERM drains: the port stops accepting at once (a new serve may bind it), open viewers are kept;
    pages with our reconnect script are closed with 1012 over the rest of DZONE_DRAIN_S (120 s) once a
    replacement answers there, else over its last tenth; the others with 1001 at its end.
    """
    from serve.api import ServeError, WebSocketServer

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if static_dir is not None:
        overrides["static_dir"] = str(static_dir)
    try:
        settings = load(ServeSettings, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.static_dir and not (Path(settings.static_dir) / "index.html").is_file():
        raise click.ClickException(f"--static-dir {settings.static_dir}: no index.html there")
    if not settings.database_url:
        raise click.ClickException("DATABASE_URL is not set (try: dzone localdb, then export its URL)")
    logs.configure(settings.log_level, settings.log_format, traceback_locals=settings.log_traceback_locals)
    server = WebSocketServer(port=settings.port, host=settings.host, settings=settings)
    try:
        asyncio.run(server.run_forever())
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
