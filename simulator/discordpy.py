"""Point discord.py at a Discord other than discord.com (the simulator, or anything speaking its protocol).

discord.py keeps both addresses in class attributes, so this is process-wide: every Client created
afterwards (and every reconnect after INVALID_SESSION, which falls back to the default gateway) uses them.
"""

from __future__ import annotations

import os

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"
API_BASE_VARIABLE = "DZONE_DISCORD_API_BASE"
GATEWAY_URL_VARIABLE = "DZONE_DISCORD_GATEWAY_URL"


def point_discord_py_at(api_base: str, gateway_url: str) -> None:
    """Set discord.py's REST base (``.../api/v10``) and default gateway (``ws://host:port/gateway``)."""
    import discord.gateway
    import discord.http
    import yarl

    if not api_base.startswith(("http://", "https://")):
        raise ValueError(f"api_base must be an http(s) URL, got {api_base!r}")
    if not gateway_url.startswith(("ws://", "wss://")):
        raise ValueError(f"gateway_url must be a ws(s) URL, got {gateway_url!r}")
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def point_discord_py_from_env() -> tuple[str, str]:
    """Apply DZONE_DISCORD_API_BASE / DZONE_DISCORD_GATEWAY_URL (Discord's own when unset); returns both."""
    api_base = os.environ.get(API_BASE_VARIABLE) or DEFAULT_API_BASE
    gateway_url = os.environ.get(GATEWAY_URL_VARIABLE) or DEFAULT_GATEWAY_URL
    point_discord_py_at(api_base, gateway_url)
    return api_base, gateway_url
