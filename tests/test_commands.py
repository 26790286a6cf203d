"""The /dzone slash commands end to end: the simulator sends INTERACTION_CREATE to the real discord.py
ingest, the command writes PostgreSQL, the triggers announce it, a real serve's viewer follows; the answer
is read from what the simulator recorded of the interaction's callback and follow-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from ingest.worker import IngestWorker
from simulator import SimConfig, Simulator
from simulator.interactions import MANAGE_GUILD, InteractionRecord
from tests.test_ingest_gateway import running_worker, wait_equal
from tests.test_serve_support import Viewer, db_world, running
from tests.test_visibility_live import until_world
from tests.waiting import wait_for

PUBLIC_URL = "https://town.example.org/"


@dataclass
class Bot:
    """A simulator with the ingest (and its commands) running against it, synced into the database."""

    sim: Simulator
    worker: IngestWorker
    conn: asyncpg.Connection

    def guild(self, index: int = 0) -> tuple[int, list[int]]:
        """A guild's id and its human members' ids."""
        guild = self.sim.state()["guilds"][index]
        return int(guild["id"]), [int(m["user_id"]) for m in guild["members"] if not m["bot"]]

    def use(
        self, guild_id: int, user_id: int, command: str, admin: bool = False, **options: Any
    ) -> InteractionRecord:
        return self.sim.interactions.invoke(
            guild_id, user_id, command, options, permissions=MANAGE_GUILD if admin else 0
        )

    async def answer(self, guild_id: int, user_id: int, command: str, admin: bool = False, **options: Any) -> str:
        record = self.use(guild_id, user_id, command, admin, **options)
        text = await record.answer(timeout=15)
        assert record.ephemeral, "every /dzone answer is ephemeral"
        assert not record.refused, record.refused
        return text

    async def audit(self, server_id: str) -> list[tuple[str, str, str]]:
        rows = await self.conn.fetch(
            "SELECT user_id, command, change FROM command_audit WHERE server_id = $1 ORDER BY audit_id", server_id
        )
        return [(r["user_id"], r["command"], r["change"]) for r in rows]


@contextlib.asynccontextmanager
async def bot(
    database_url: str, conn: asyncpg.Connection, config: SimConfig | None = None, **overrides: Any
) -> AsyncIterator[Bot]:
    overrides.setdefault("public_url", PUBLIC_URL)
    async with (
        Simulator(config or SimConfig(guilds=1, members=8, seed=25)) as sim,
        running_worker(sim, database_url, **overrides) as worker,
    ):
        await wait_equal(conn, sim)
        await asyncio.wait_for(sim.interactions.registered.wait(), 10)
        yield Bot(sim, worker, conn)


async def test_commands_are_registered_as_one_dzone_group(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn) as b:
        (command,) = b.sim.interactions.global_commands
        assert command["name"] == "dzone"
        assert command["dm_permission"] is False  # guilds only
        assert {o["name"] for o in command["options"]} == {"link", "hide-me", "show-me", "status", "settings"}


async def test_commands_off_registers_none(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn, commands=False) as b:
        assert b.sim.interactions.global_commands == []
        assert b.sim.interactions.registrations == 1


async def test_link_answers_the_town_url_and_never_a_secret(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn) as b:
        gid, people = b.guild()
        text = await b.answer(gid, people[0], "dzone link")
        assert f"{PUBLIC_URL}?s={gid}" in text
        assert "log in" not in text
        await conn.execute(
            "UPDATE discord_servers SET alias = 'cafe', passworded = TRUE, oauth_client_id = '123' "
            "WHERE server_id = $1",
            str(gid),
        )
        text = await b.answer(gid, people[0], "dzone link")
        assert f"{PUBLIC_URL}?s=cafe" in text
        assert "log in with Discord" in text
        assert "123" not in text


async def test_link_without_a_public_url_says_what_to_set(database_url: str, conn: asyncpg.Connection) -> None:
    async with bot(database_url, conn, public_url=None) as b:
        gid, people = b.guild()
        assert "DZONE_PUBLIC_URL" in await b.answer(gid, people[0], "dzone link")
