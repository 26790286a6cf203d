"""d-back 0.0.18 under test: run with the python of d-back's own virtualenv (see compare_dback.py).

Serves d-back's mock servers through registered async callbacks (``on_get_server_data`` and
``on_get_user_data`` answering with d-back's own mock data), which keeps the mock timers off, and
calls d-back's ``broadcast_presence`` in this process when the harness asks over the control port.
``--export`` prints the mock data as JSON instead, so the harness can load the same rows into PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_control import broadcast, serve_control
from d_back.server import WebSocketServer

MOCK_KEYS = ("232769614004748288", "482241773318701056", "123456789012345678", "987654321098765432")


def mock_data(server: WebSocketServer) -> dict[str, Any]:
    """d-back's mock servers and their members, as the callbacks will serve them."""
    servers = server.mock_provider.get_mock_server_data()
    return {
        "servers": servers,
        "users": {key: server.mock_provider.get_mock_user_data(key) for key in servers},
    }


async def main(port: int, control_port: int) -> None:
    server = WebSocketServer(port=port, host="127.0.0.1")
    data = mock_data(server)

    servers: dict[str, Any] = data["servers"]
    users: dict[str, dict[str, Any]] = data["users"]

    async def get_servers() -> dict[str, Any]:
        return servers

    async def get_users(key: str) -> dict[str, Any]:
        return users.get(key, {})

    # Registering both providers is what keeps d-back's per-connect mock timers from starting.
    server.on_get_server_data(get_servers)
    server.on_get_user_data(get_users)
    stopped = asyncio.Event()

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "ping":
            joined = sum(1 for ws in server.connections if getattr(ws, "discordServer", None))
            return {"connections": len(server.connections), "joined": joined}
        if cmd == "broadcast":
            return await broadcast(server, request)
        if cmd == "stop":
            stopped.set()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    serving = asyncio.create_task(server.start())
    control = await serve_control(handle, control_port)
    await stopped.wait()
    control.close()
    await server.stop()
    await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--export", action="store_true", help="print the mock data as JSON and exit")
    args = parser.parse_args()
    if args.export:
        print(json.dumps(mock_data(WebSocketServer())))
    else:
        asyncio.run(main(args.port, args.control_port))
