"""Handing viewers to a replacement on the same port (docs/deploy.md, "Restarts").

Every serve binds its port with SO_REUSEPORT, so a new one can bind while the old one drains. The draining
serve has closed its own listener; whoever answers ``/readyz`` 200 on its address from then on is a
replacement, ready for the viewers it closes one by one over the rest of the drain: those whose page runs
our reconnect script (serve/web/dzone-reconnect.js offers the subprotocol ``RECONNECTS``, which we select),
who come back.
The others would move to their next socket URL, so they keep their socket until the drain ends. Without a
replacement, those that come back are closed over the drain's last tenth instead: behind a balancer they
return through it to another replica, and spread out.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.typing import Subprotocol

log = structlog.get_logger(__name__)

RECONNECTS = "dzone-reconnect"

TAIL_SHARE = 0.1  # without a replacement, viewers that come back are closed over the drain's last tenth
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0  # one probe: connect, request, status line
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def probe_host(bound: str) -> str:
    """The address to reach our own port at: loopback for a wildcard bind, else the bound host."""
    return _WILDCARDS.get(bound, bound)


def _probe_tls() -> ssl.SSLContext:
    """The probe only reads a status line from our own port: the replacement's name is not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def answers_ready(host: str, port: int, tls: bool, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One ``GET /readyz`` on ``host:port``: True when something answers 200, False on anything else."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=_probe_tls() if tls else None)
            writer.write(f"GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            status_line = await reader.readline()
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return status_line.split(b" ", 2)[1:2] == [b"200"]


async def wait_for_replacement(host: str, port: int, tls: bool, deadline: float) -> bool:
    """Probe until a replacement answers ready (True) or the loop's clock passes ``deadline`` (False)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        remaining = deadline - loop.time()
        if await answers_ready(host, port, tls, min(PROBE_TIMEOUT_S, max(remaining, 0.01))):
            return True
        await asyncio.sleep(min(PROBE_INTERVAL_S, max(deadline - loop.time(), 0)))
    return False


def select_subprotocol(_ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Accept our script's subprotocol when offered (a browser fails a socket whose offer is not answered);
    any other offer, or none, continues without one, as d-back does."""
    return Subprotocol(RECONNECTS) if RECONNECTS in offered else None


def comes_back(ws: ServerConnection) -> bool:
    """The viewer's page runs our reconnect script: it reconnects to the same URL when closed."""
    return ws.subprotocol == RECONNECTS


def spread(count: int, start: float, end: float) -> list[float]:
    """``count`` instants from ``start`` evenly over [start, end): the first at once, none at the end."""
    step = max(end - start, 0) / count if count else 0
    return [start + i * step for i in range(count)]
