"""Let the writer breathe while discord.py drains a backlog.

discord.py's gateway loop reads frames that aiohttp has already buffered without ever suspending, so
under a presence storm it can hold the event loop for seconds; the writer's database replies then
wait just as long (measured: 2-3 s loop lag, 2.5 s "commits" of a 0.1 s statement). Wrapping
``DiscordWebSocket.received_message`` to yield once every ``max_stretch_s`` bounds that lag at the
cost of one ``sleep(0)`` every few ms.
"""

from __future__ import annotations

import asyncio
import time

from discord.gateway import DiscordWebSocket

_state = {"last_yield": 0.0, "max_stretch_s": 0.005}


def install_cooperative_yield(max_stretch_s: float = 0.005) -> None:
    """Make discord.py's gateway yield to the event loop at least every ``max_stretch_s`` (idempotent)."""
    _state["max_stretch_s"] = max_stretch_s
    original = DiscordWebSocket.received_message
    if getattr(original, "_dzone_yields", False):
        return

    async def received_message(self: DiscordWebSocket, msg: object, /) -> None:
        await original(self, msg)
        now = time.perf_counter()
        if now - _state["last_yield"] >= _state["max_stretch_s"]:
            _state["last_yield"] = now
            await asyncio.sleep(0)

    received_message._dzone_yields = True  # type: ignore[attr-defined]
    received_message.__wrapped__ = original  # type: ignore[attr-defined]  # inspect.unwrap finds discord.py's
    DiscordWebSocket.received_message = received_message  # type: ignore[method-assign]
