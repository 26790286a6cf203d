"""Point discord.py at a Discord other than discord.com (the simulator, or anything speaking its protocol).

discord.py keeps both addresses in class attributes, so this is process-wide: every Client created
afterwards (and every reconnect after INVALID_SESSION, which falls back to the default gateway) uses them.
"""

from __future__ import annotations

import os

from shared.discord_rules import DISCORD_API_BASE, DISCORD_GATEWAY_URL, point_discord_py

API_BASE_VARIABLE = "DZONE_DISCORD_API_BASE"
GATEWAY_URL_VARIABLE = "DZONE_DISCORD_GATEWAY_URL"


def point_discord_py_from_env() -> tuple[str, str]:
    """Apply DZONE_DISCORD_API_BASE / DZONE_DISCORD_GATEWAY_URL (Discord's own when unset); returns both."""
    api_base = os.environ.get(API_BASE_VARIABLE) or DISCORD_API_BASE
    gateway_url = os.environ.get(GATEWAY_URL_VARIABLE) or DISCORD_GATEWAY_URL
    point_discord_py(api_base, gateway_url)
    return api_base, gateway_url
