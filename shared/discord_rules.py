"""Discord's rules that the ingest, the serve and the simulator all follow, defined once.

The default colour, which shard a guild belongs to, and where discord.py connects (the ingest points it
at the configured Discord, tests and the demo at the simulator).
"""

from __future__ import annotations

# What d-zone (and Discord) shows for a member without a coloured role. The guide's callback examples
# write it "#99AAB5"; colours are CSS, so a callback's upper-case value is passed on as given.
DEFAULT_ROLE_COLOR = "#99aab5"
DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"


def shard_of(guild_id: int, shard_count: int) -> int:
    """Discord's rule: a guild belongs to shard ``(guild_id >> 22) % shard_count``."""
    return (guild_id >> 22) % shard_count


def point_discord_py(api_base: str, gateway_url: str | None = None) -> None:
    """Send discord.py's REST calls to ``api_base`` (``.../api/v10``) and its gateway to ``gateway_url``.

    Process-wide (discord.py keeps both in class attributes, and falls back to the default gateway after
    INVALID_SESSION); no ``gateway_url`` leaves the gateway discord.py would use.
    """
    import discord.gateway
    import discord.http
    import yarl

    if not api_base.startswith(("http://", "https://")):
        raise ValueError(f"api_base must be an http(s) URL, got {api_base!r}")
    if gateway_url is not None and not gateway_url.startswith(("ws://", "wss://")):
        raise ValueError(f"gateway_url must be a ws(s) URL, got {gateway_url!r}")
    discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
