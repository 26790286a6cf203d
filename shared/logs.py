"""Logging set-up shared by every process: structlog over the standard library, levelled, no secrets.

Call :func:`configure` once at start; then ``log = structlog.get_logger(__name__)`` and
``log.info("event_name", key=value)``. Library loggers (discord.py, websockets, asyncpg) go through
the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure(level: str = "info", fmt: Literal["console", "json"] = "console") -> None:
    """Route structlog and stdlib logging to stderr at ``level`` in ``fmt``."""
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs the exception turned into text first (else it renders "<traceback object>"); the
    # console renderer formats exc_info itself.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # discord.py's gateway chatter is useful only when debugging it.
    logging.getLogger("discord").setLevel(max(root.level, logging.INFO))
    logging.getLogger("websockets").setLevel(max(root.level, logging.WARNING))
