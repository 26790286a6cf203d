"""dzone-pg's serve under test: run with this project's .venv python (see compare_dback.py).

Serves from PostgreSQL (``DATABASE_URL``) through the guide-compatible ``serve.WebSocketServer`` and
calls its ``broadcast_presence`` in this process when the harness asks over the control port; the
database path needs nothing from here (the harness commits the rows, the serve's LISTEN relays them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from compare_control import broadcast, serve_control  # noqa: E402

from serve import WebSocketServer  # noqa: E402


async def main(port: int, control_port: int) -> None:
    server = WebSocketServer(port=port, host="127.0.0.1")
    stopped = asyncio.Event()

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "ping":
            return {"connections": len(server.connections)}
        if cmd == "broadcast":
            return await broadcast(server, request)
        if cmd == "stop":
            stopped.set()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    await server.open()
    control = await serve_control(handle, control_port)
    await stopped.wait()
    control.close()
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.control_port))
