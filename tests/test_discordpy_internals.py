"""The discord.py internals the ingest relies on, checked one by one against the installed discord.py.

pyproject pins discord.py below its next minor release. Before raising that pin, run this file against the
new release: a failure names the internal, the ingest code that uses it, and what to check there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import version

import discord.gateway
import discord.state
import pytest

from ingest.gateway import LEAN_PARSERS, IngestClient


def _client() -> IngestClient:
    return IngestClient(
        include_bots=False, relay_messages=False, shard_count=1, shard_ids=None, guild_ready_timeout=0.1
    )


def _parsers_are_ours() -> bool:
    client = _client()
    parsers = client._connection.parsers
    return set(LEAN_PARSERS) <= set(parsers) and all(
        parsers[name].__qualname__.endswith("_guarded.<locals>.guarded")
        and getattr(client._discord_parsers[name], "__self__", None) is client._connection
        for name in LEAN_PARSERS
    )


def _websocket_reads_the_same_table() -> bool:
    from_client = inspect.getsource(discord.gateway.DiscordWebSocket.from_client)
    received = inspect.getsource(inspect.unwrap(discord.gateway.DiscordWebSocket.received_message))
    return (
        "ws._discord_parsers = client._connection.parsers" in from_client
        and "func = self._discord_parsers[event]" in received
    )


def _chunk_requests() -> bool:
    state = _client()._connection
    processed = list(inspect.signature(state.process_chunk_requests).parameters)
    requested = inspect.signature(discord.gateway.DiscordWebSocket.request_chunks).parameters
    return processed == ["guild_id", "nonce", "members", "complete"] and {
        "limit",
        "presences",
        "nonce",
    } <= set(requested)


def _state_attributes() -> bool:
    state = _client()._connection
    return (
        callable(getattr(state, "_get_guild", None))
        and hasattr(state, "self_id")
        and state.member_cache_flags.value == 0  # discord.py caches no members
        and state._chunk_guilds is True  # discord.py still requests the chunks
    )


def _client_websocket_lookup() -> bool:
    return callable(getattr(_client(), "_get_websocket", None))


def _received_message_is_patchable() -> bool:
    method = inspect.unwrap(discord.gateway.DiscordWebSocket.received_message)
    return inspect.iscoroutinefunction(method) and list(inspect.signature(method).parameters)[:2] == [
        "self",
        "msg",
    ]


def _route_base() -> bool:
    return isinstance(discord.http.Route.BASE, str) and discord.http.Route.BASE.endswith("/api/v10")


# (the internal, where the ingest uses it, what to check there, the check)
INTERNALS: list[tuple[str, str, str, Callable[[], bool]]] = [
    (
        "ConnectionState.parsers (the gateway's parser table, one entry per event name)",
        "ingest/gateway.py IngestClient._install_parsers",
        "that our entries for LEAN_PARSERS replace discord.py's and the originals are still callable",
        _parsers_are_ours,
    ),
    (
        "DiscordWebSocket reading ConnectionState.parsers itself (_discord_parsers)",
        "ingest/gateway.py IngestClient._install_parsers",
        "that the websocket dispatches through the very dict we changed, not a copy",
        _websocket_reads_the_same_table,
    ),
    (
        "chunk requests: ConnectionState.process_chunk_requests and DiscordWebSocket.request_chunks",
        "ingest/gateway.py _parse_members_chunk and _request_members",
        "the signatures, and that a chunk we parse still completes discord.py's pending chunk request",
        _chunk_requests,
    ),
    (
        "ConnectionState._get_guild, self_id, member_cache_flags and _chunk_guilds",
        "ingest/gateway.py (GUILD_CREATE, member handlers) and the member cache being off",
        "that discord.py caches no members and still chunks guilds at READY",
        _state_attributes,
    ),
    (
        "Client._get_websocket (the shard's websocket of a guild)",
        "ingest/gateway.py _request_members",
        "that it still returns the DiscordWebSocket of the guild's shard",
        _client_websocket_lookup,
    ),
    (
        "DiscordWebSocket.received_message(self, msg)",
        "ingest/fairness.py install_cooperative_yield",
        "that wrapping it still sees every gateway frame",
        _received_message_is_patchable,
    ),
    (
        "discord.http.Route.BASE",
        "ingest/worker.py (the API base the simulator replaces)",
        "that REST calls are still built from Route.BASE",
        _route_base,
    ),
]


@pytest.mark.parametrize("internal", INTERNALS, ids=[entry[0].split(" ")[0] for entry in INTERNALS])
def test_the_discord_py_internals_the_ingest_relies_on(
    internal: tuple[str, str, str, Callable[[], bool]],
) -> None:
    name, used_in, what, check = internal
    try:
        holds = check()
    except (AttributeError, KeyError, TypeError, OSError) as exc:
        holds, name = False, f"{name} ({type(exc).__name__}: {exc})"
    assert holds, (
        f"the ingest relies on discord.py internals {name}, and discord.py {version('discord.py')} changed "
        f"them: check {used_in} ({what}) against this release before raising the pin on discord.py in "
        "pyproject.toml and constraints.txt"
    )
