"""The change feed end to end: triggers -> NOTIFY -> a real LISTEN connection -> shared.feed.decode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared import feed

SENTINEL = "sentinel"


class Listener:
    """Collects feed payloads; ``drain()`` returns everything committed before it was called."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.payloads: list[str] = []
        self._sentinel = asyncio.Event()

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == SENTINEL:
            self._sentinel.set()
        else:
            self.payloads.append(payload)

    async def start(self) -> None:
        await self.conn.add_listener(feed.CHANNEL, self._on_notify)
        await self.conn.add_listener(SENTINEL, self._on_notify)

    async def drain(self, writer: asyncpg.Connection) -> list[feed.FeedEvent]:
        return [feed.decode(p) for p in await self.drain_raw(writer)]

    async def drain_raw(self, writer: asyncpg.Connection) -> list[str]:
        # Notifications arrive in commit order, so once a later sentinel is here, so is everything before it.
        self._sentinel.clear()
        await writer.execute(f"NOTIFY {SENTINEL}")
        await asyncio.wait_for(self._sentinel.wait(), timeout=10)
        payloads, self.payloads = self.payloads, []
        return payloads


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[Listener]:
    conn = await asyncpg.connect(database_url)
    collected = Listener(conn)
    await collected.start()
    try:
        yield collected
    finally:
        await conn.close()


@pytest.fixture
async def server(conn: asyncpg.Connection, listener: Listener) -> str:
    await conn.execute("INSERT INTO discord_servers (server_id, name) VALUES ('100', 'Guild')")
    await listener.drain(conn)
    return "100"


async def test_user_row_lifecycle_announces_each_real_change_once(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    await conn.execute("INSERT INTO discord_users VALUES ('7', '100', 'Zoë', 'online', '#aabbcc')")
    [inserted] = await listener.drain(conn)
    assert isinstance(inserted, feed.UserUpserted)
    assert (
        inserted.server_id,
        inserted.user_id,
        inserted.username,
        inserted.status,
        inserted.role_color,
    ) == ("100", "7", "Zoë", "online", "#aabbcc")

    await conn.execute("UPDATE discord_users SET status = 'dnd' WHERE user_id = '7'")
    [updated] = await listener.drain(conn)
    assert isinstance(updated, feed.UserUpserted) and updated.status == "dnd"

    await conn.execute("UPDATE discord_users SET status = 'dnd', username = 'Zoë' WHERE user_id = '7'")
    assert await listener.drain(conn) == []  # a no-op update announces nothing

    await conn.execute("DELETE FROM discord_users WHERE user_id = '7'")
    [deleted] = await listener.drain(conn)
    assert deleted == feed.UserDeleted(deleted.seq, "100", "7")


async def test_flip_flop_in_one_transaction_is_not_merged(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    await conn.execute("INSERT INTO discord_users VALUES ('7', '100', 'a', 'online', '#aabbcc')")
    await listener.drain(conn)
    async with conn.transaction():
        for status in ("idle", "online", "idle", "online", "idle"):
            await conn.execute("UPDATE discord_users SET status = $1", status)
    events = await listener.drain(conn)
    assert [e.status for e in events if isinstance(e, feed.UserUpserted)] == [
        "idle",
        "online",
        "idle",
        "online",
        "idle",
    ]
    assert len({e.seq for e in events}) == 5


async def test_bulk_mode_sends_one_resync_instead_of_rows(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    async with conn.transaction():
        await conn.execute(feed.BULK_MODE)
        await conn.executemany(
            "INSERT INTO discord_users VALUES ($1, '100', $2, 'online', '#000000')",
            [(str(i), f"user{i}") for i in range(1, 501)],
        )
        await conn.execute("DELETE FROM discord_users WHERE user_id = '1'")
        await conn.execute(feed.NOTIFY_RESYNC, server)
    events = await listener.drain(conn)
    assert len(events) == 1 and isinstance(events[0], feed.ServerResync) and events[0].server_id == server
    # bulk mode is transaction-local: the next change is announced again
    await conn.execute("UPDATE discord_users SET status = 'idle' WHERE user_id = '2'")
    [event] = await listener.drain(conn)
    assert isinstance(event, feed.UserUpserted) and event.user_id == "2"


async def test_server_changes_are_announced(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    await conn.execute("UPDATE discord_servers SET alias = 'guild'")
    await conn.execute("UPDATE discord_servers SET alias = 'guild'")  # no-op
    await conn.execute("INSERT INTO discord_users VALUES ('7', '100', 'a', 'online', '#aabbcc')")
    await conn.execute("DELETE FROM discord_servers")
    events = await listener.drain(conn)
    assert [type(e).__name__ for e in events] == [
        "ServerChanged",
        "UserUpserted",
        "ServerChanged",
        "UserDeleted",
    ] or [type(e).__name__ for e in events] == [
        "ServerChanged",
        "UserUpserted",
        "UserDeleted",
        "ServerChanged",
    ]
    changed = [e for e in events if isinstance(e, feed.ServerChanged)]
    assert [c.deleted for c in changed] == [False, True]


async def test_server_payload_carries_the_row(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    created = await conn.fetchval("SELECT extract(epoch FROM created_at)::float8 FROM discord_servers")
    await conn.execute(
        "UPDATE discord_servers SET alias = 'g1', passworded = TRUE, is_default = TRUE, hide_offline = FALSE,"
        " relay_messages = FALSE, oauth_client_id = '42', enabled = FALSE, departed_at = now()"
    )
    await conn.execute("UPDATE discord_servers SET alias = NULL, oauth_client_id = NULL, created_at = NULL")
    first, second = await listener.drain(conn)
    assert isinstance(first, feed.ServerChanged) and isinstance(second, feed.ServerChanged)
    assert first.row == feed.ServerRow(
        name="Guild",
        alias="g1",
        passworded=True,
        is_default=True,
        enabled=False,
        departed=True,
        hide_offline=False,
        relay_messages=False,
        oauth_client_id="42",
        created_at=created,
    )
    assert first.row is not None and not first.row.joinable
    assert second.row is not None and (second.row.alias, second.row.oauth_client_id) == (None, None)
    assert second.row.created_at is None


async def test_message_is_announced_on_one_line(
    conn: asyncpg.Connection, listener: Listener, server: str
) -> None:
    await conn.execute(feed.NOTIFY_MESSAGE, server, "7", "55", "9001", "hello\r\nworld\nagain")
    [message] = await listener.drain(conn)
    assert message == feed.ChatMessage(message.seq, "100", "7", "55", "9001", "hello world again")


@pytest.mark.parametrize("char", ["\x01", '"', "😀", "é"])
async def test_payloads_stay_under_the_notify_limit(
    conn: asyncpg.Connection, listener: Listener, server: str, char: str
) -> None:
    # Longest ids and names in the widest encodings: characters needing 6-byte escapes or 4-byte UTF-8.
    # PostgreSQL refuses a payload of 8,000 bytes or more by failing the statement.
    longest_id = "18446744073709551615"
    await conn.execute(
        "INSERT INTO discord_users VALUES ($1, '100', $2, 'offline', '#ffffff')", longest_id, char * 100
    )
    await conn.execute("UPDATE discord_servers SET name = $1", char * 100)
    await conn.execute(feed.NOTIFY_MESSAGE, server, longest_id, longest_id, longest_id, char * 5000)
    raw = await listener.drain_raw(conn)
    assert len(raw) == 3
    assert max(len(p.encode()) for p in raw) < 8000
    user, _server, message = (feed.decode(p) for p in raw)
    assert isinstance(user, feed.UserUpserted) and user.username == char * 100
    assert isinstance(message, feed.ChatMessage) and message.text == char * feed.MESSAGE_MAX_CHARS


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1]",
        '{"kind": "user", "op": "upsert", "seq": 1, "server_id": "1"}',
        '{"kind": "nope", "seq": 1, "server_id": "1"}',
        '{"kind": "server", "op": "upsert", "seq": 1, "server_id": "1"}',
        '{"kind": "server", "op": "upsert", "seq": 1, "server_id": "1", "name": "a", "alias": null,'
        ' "passworded": "yes", "is_default": false, "enabled": true, "departed": false,'
        ' "hide_offline": true, "relay_messages": true, "oauth_client_id": null, "created_at": null}',
        '{"kind": "user", "op": "upsert", "seq": 1, '
        '"server_id": "1", "user_id": "2", "username": "a", "status": "away", "role_color": "#000000"}',
        '{"kind": "user", "op": "delete", "seq": 1, "server_id": "1", "user_id": "2", "hidden": "yes"}',
    ],
)
def test_decode_rejects_malformed_payloads(payload: str) -> None:
    with pytest.raises(feed.FeedDecodeError):
        feed.decode(payload)
