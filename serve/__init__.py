"""dzone serve: a d-back-compatible WebSocket server on PostgreSQL that relays the change feed.

``from serve import WebSocketServer`` is the drop-in for ``from d_back.server import WebSocketServer``.
"""

from serve.api import ServeError, WebSocketServer

__all__ = ["ServeError", "WebSocketServer"]
