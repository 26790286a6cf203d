"""The data source interface (serve/sources.py): the hub runs on the in-memory source without a database,
callbacks or sockets, and a registered callback replaces its database default."""

from __future__ import annotations

from typing import Any, cast

import pytest

from serve.hub import Callbacks, Hub
from serve.metrics import ServeMetrics
from serve.oauth import DiscordIdentity
from serve.sources import CallbackMembers, CallbackServers, Database, Memory, choose
from serve.world import Member, ServerInfo
from shared.feed import UserDeleted, UserUpserted
from shared.settings import ServeSettings

KEY = "100000000000000001"
ALICE, BOB = "200000000000000001", "200000000000000002"


def memory_hub(live: bool = True) -> tuple[Hub, Memory]:
    source = Memory(
        [ServerInfo(key=KEY, id="club", name="Club", is_default=True)],
        {KEY: {ALICE: Member("alice", "online", "#112233")}},
        live=live,
    )
    hub = Hub(
        ServeSettings(database_url=None),
        ServeMetrics(),
        Callbacks(),
        cast(DiscordIdentity, None),  # no passworded server here: Discord is never asked
        None,
        sources=(source, source),
    )
    return hub, source


async def test_the_hub_reads_and_follows_an_in_memory_source():
    hub, _source = memory_hub()
    directory = await hub.refresh_directory()
    assert directory.resolve(None) == directory.resolve("club") and directory.default is not None
    assert await hub.is_member(KEY, ALICE) is True  # a live source answers itself (the database does) ...
    assert KEY not in hub.states  # ... without reading the server's members
    state = await hub.live_state(KEY)
    assert set(state.members) == {ALICE}
    hub.on_feed_event(UserUpserted(1, KEY, BOB, "bob", "idle", "#445566"))
    hub.on_feed_event(UserDeleted(2, KEY, ALICE))
    assert {uid: m.username for uid, m in state.members.items()} == {BOB: "bob"}
    # Cached and followed by the feed: memory answers as of the last notification, no query (the
    # in-memory source still lists alice; the database would not, after that commit).
    assert await hub.is_member(KEY, ALICE) is False and await hub.is_member(KEY, BOB) is True


async def test_a_source_that_is_not_live_is_read_on_every_join_and_decides_membership_by_it():
    hub, source = memory_hub(live=False)
    await hub.refresh_directory()
    first = await hub.live_state(KEY)
    source.by_server[KEY][BOB] = Member("bob", "online", "#445566")
    assert set((await hub.live_state(KEY)).members) == {ALICE, BOB} and first is hub.states[KEY]
    hub.on_feed_event(UserDeleted(3, KEY, BOB))  # not followed: the next read decides
    assert BOB in hub.states[KEY].members


async def test_a_registered_callback_replaces_its_database_default():
    async def servers() -> dict[str, Any]:
        return {}

    async def users(_key: str) -> dict[str, Any]:
        return {}

    pool = cast(Any, object())
    server_source, member_source = choose(servers, None, pool, 1.0)
    assert isinstance(server_source, CallbackServers) and not server_source.live
    assert isinstance(member_source, Database) and member_source.live
    server_source, member_source = choose(None, users, pool, 1.0)
    assert isinstance(server_source, Database) and isinstance(member_source, CallbackMembers)
    with pytest.raises(ValueError, match="database pool"):
        choose(servers, None, None, 1.0)
