"""Logging set-up shared by every process: structlog over the standard library, levelled, no secrets.

Call :func:`configure` once at start; then ``log = structlog.get_logger(__name__)`` and
``log.info("event_name", key=value)``. Library loggers (discord.py, websockets, asyncpg) go through
the same renderer, and every line it renders, tracebacks included, passes through
:func:`shared.redaction.redact` last, in both formats, whatever else is installed.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Literal, TextIO

import structlog
from structlog.typing import ExcInfo

from shared import redaction
from shared.redaction import redact


def format_exception(exc_info: ExcInfo, *, with_locals: bool = False) -> str:
    """A plain traceback, chained causes included; local variables only when asked (a debugging aid).

    The same text in both formats, never rich's: its tracebacks show every frame's locals (a bot token,
    a password) and wrap long lines, which would split a secret out of the redaction's reach.
    """
    exc_type, exc, tb = exc_info
    lines = traceback.TracebackException(exc_type, exc, tb, capture_locals=with_locals, compact=True).format()
    return "".join(lines).rstrip("\n")


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with the finished line (message, fields, traceback) redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(
    level: str = "info", fmt: Literal["console", "json"] = "console", *, traceback_locals: bool = False
) -> None:
    """Route structlog and stdlib logging to stderr at ``level`` in ``fmt``; uncaught exceptions too.

    ``traceback_locals`` (``DZONE_LOG_TRACEBACK_LOCALS``) adds each frame's local variables to
    tracebacks, redacted like the rest.
    """

    redaction.add_environment()  # a process that loads no settings (the simulator) has secrets too

    def exception_text(exc_info: ExcInfo) -> str:
        return format_exception(exc_info, with_locals=traceback_locals)

    def console_exception(sio: TextIO, exc_info: ExcInfo) -> None:
        sio.write("\n" + exception_text(exc_info))

    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs the exception turned into text first (else it renders "<traceback object>"); the
    # console renderer formats exc_info itself. Both with our formatter: rich's is never used.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.ExceptionRenderer(exception_text), structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=console_exception)
        ]
    )
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
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
    # An exception nobody caught is one more log line (redacted), not Python's own print to stderr.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("dzone").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread else "?"
    logging.getLogger("dzone").critical(
        "uncaught_exception_in_thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
