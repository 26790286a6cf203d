"""dzone serve: a d-back-compatible WebSocket server on PostgreSQL that relays the change feed.

``from serve import WebSocketServer`` is the drop-in for ``from d_back.server import WebSocketServer``.
The names are loaded on first use (PEP 562), so that importing a pure module such as ``serve.core``
does not load the server and its I/O libraries (websockets, asyncpg, structlog).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve.api import ServeError, WebSocketServer

__all__ = ["ServeError", "WebSocketServer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serve import api

        return getattr(api, name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
