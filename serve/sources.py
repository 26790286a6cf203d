"""One interface for where servers and members come from: PostgreSQL (kept current by the change feed),
the guide's callbacks (read on every use, like d-back), or memory (unit tests).

The hub asks a source and never which kind it is; ``live`` says whether the change feed keeps its data
current (then the hub caches it and applies notifications) or it must be read again on every use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from serve import providers
from serve.providers import ServerDataCallback, UserDataCallback
from serve.world import Member, Roster, ServerInfo


class ServerSource(Protocol):
    live: bool

    async def servers(self) -> list[ServerInfo]:
        """Every joinable server in server-list order; raises ProviderError when the source fails."""
        ...


class MemberSource(Protocol):
    live: bool

    async def members(self, key: str) -> Roster:
        """The server's members; raises ProviderError when the source fails."""
        ...

    async def is_member(self, key: str, user_id: str) -> bool | None:
        """Whether the user is a member now, or None when only the server's members (read) can say."""
        ...


@dataclass
class Database:
    """discord_servers / discord_users; the change feed keeps them current."""

    pool: asyncpg.Pool
    live: bool = True

    async def servers(self) -> list[ServerInfo]:
        return await providers.db_servers(self.pool)

    async def members(self, key: str) -> Roster:
        return await providers.db_members(self.pool, key)

    async def is_member(self, key: str, user_id: str) -> bool | None:
        return await providers.db_is_member(self.pool, key, user_id)


@dataclass
class CallbackServers:
    """``on_get_server_data``: validated, called on every socket and join (nothing notifies its changes)."""

    callback: ServerDataCallback
    timeout_s: float
    live: bool = False

    async def servers(self) -> list[ServerInfo]:
        raw = await providers.call_provider("on_get_server_data", self.callback(), self.timeout_s)
        return providers.validate_servers(raw)


@dataclass
class CallbackMembers:
    """``on_get_user_data``: validated, called on every join."""

    callback: UserDataCallback
    timeout_s: float
    live: bool = False

    async def members(self, key: str) -> Roster:
        raw = await providers.call_provider(f"on_get_user_data({key})", self.callback(key), self.timeout_s)
        return Roster(providers.validate_users(raw, key))  # the callback decides who is shown

    async def is_member(self, key: str, user_id: str) -> bool | None:
        return None  # the members a join reads anyway decide


@dataclass
class Memory:
    """Fixed servers and members, for unit tests of the hub without a database or callbacks."""

    server_list: list[ServerInfo] = field(default_factory=list)
    by_server: Mapping[str, dict[str, Member]] = field(default_factory=dict)
    live: bool = True

    async def servers(self) -> list[ServerInfo]:
        return list(self.server_list)

    async def members(self, key: str) -> Roster:
        return Roster(dict(self.by_server.get(key, {})))

    async def is_member(self, key: str, user_id: str) -> bool | None:
        return user_id in self.by_server.get(key, {})


def choose(
    server_data: ServerDataCallback | None,
    user_data: UserDataCallback | None,
    pool: asyncpg.Pool | None,
    timeout_s: float,
) -> tuple[ServerSource, MemberSource]:
    """A registered callback replaces its database default (the guide's rule)."""
    database = Database(pool) if pool is not None else None
    servers: ServerSource | None = CallbackServers(server_data, timeout_s) if server_data else database
    members: MemberSource | None = CallbackMembers(user_data, timeout_s) if user_data else database
    if servers is None or members is None:
        raise ValueError("a database pool is needed for the data no callback provides")
    return servers, members
