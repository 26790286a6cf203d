"""The member-download tracker: a guild is synced only after a complete chunk answer (pure logic)."""

from __future__ import annotations

from ingest.chunks import ChunkProgress, members_complete

G = 1


def test_an_answer_is_complete_when_every_chunk_arrived_in_any_order() -> None:
    progress = ChunkProgress()
    assert not progress.received(G, "n", 2, 3)
    assert not progress.received(G, "n", 0, 3)
    assert not progress.complete(G)
    assert progress.received(G, "n", 1, 3)
    assert progress.complete(G)


def test_a_lost_chunk_keeps_the_guild_incomplete_until_another_answer_completes() -> None:
    progress = ChunkProgress()
    progress.received(G, "first", 0, 2)  # chunk 1 of "first" never comes
    assert not members_complete(progress, G, cached=1000, member_count=1500)
    progress.received(G, "again", 0, 1)
    assert members_complete(progress, G, cached=1500, member_count=1500)


def test_duplicated_chunks_do_not_count_twice() -> None:
    progress = ChunkProgress()
    progress.received(G, "n", 0, 2)
    assert not progress.received(G, "n", 0, 2)
    assert not progress.complete(G)


def test_a_new_guild_create_starts_over() -> None:
    progress = ChunkProgress()
    progress.received(G, "n", 0, 1)
    progress.reset(G)
    assert not progress.complete(G)
    assert not members_complete(progress, G, cached=10, member_count=20)


def test_guilds_are_independent_and_a_full_guild_create_needs_no_chunks() -> None:
    progress = ChunkProgress()
    progress.received(2, "n", 0, 1)
    assert not progress.complete(G)
    assert members_complete(progress, G, cached=40, member_count=40)
    assert members_complete(progress, G, cached=3, member_count=None)
