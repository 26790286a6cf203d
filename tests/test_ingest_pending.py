"""PendingWork, the writer's uncommitted state, as plain data: coalescing, batches, put back on failure."""

from __future__ import annotations

from ingest.mapping import MemberRow
from ingest.pending import ChatLine, GuildOp, PendingWork


def row(server_id: str, user_id: str, status: str = "online") -> MemberRow:
    return MemberRow(server_id, user_id, f"user {user_id}", status, "#99aab5")


def test_the_latest_state_of_a_member_wins_and_counts_once() -> None:
    pending = PendingWork(batch_max_rows=3, message_queue_max=10)
    assert not pending.put(row("1", "10", "online"), 1.0)
    assert not pending.put(row("1", "10", "idle"), 2.0)
    pending.remove("1", "11", 3.0)
    assert pending.row_count == 2
    assert pending.put(row("2", "10"), 4.0)  # the third distinct member fills the batch
    taken = pending.take()
    assert taken.batch == [
        ("1", {"10": (row("1", "10", "idle"), 2.0), "11": (None, 3.0)}),
        ("2", {"10": (row("2", "10"), 4.0)}),
    ]
    assert pending.row_count == 0 and pending.idle()


def test_a_batch_takes_at_most_batch_max_rows_oldest_first() -> None:
    pending = PendingWork(batch_max_rows=2, message_queue_max=10)
    for user_id in ("10", "11", "12"):
        pending.put(row("1", user_id), 0.0)
    first = pending.take()
    assert [list(part) for _, part in first.batch] == [["10", "11"]]
    assert pending.row_count == 1
    assert [list(part) for _, part in pending.take().batch] == [["12"]]


def test_a_failed_batch_goes_back_without_replacing_newer_state() -> None:
    pending = PendingWork(batch_max_rows=10, message_queue_max=10)
    pending.put(row("1", "10", "online"), 1.0)
    pending.put(row("1", "11", "online"), 1.0)
    taken = pending.take()
    pending.put(row("1", "10", "dnd"), 2.0)  # arrived while the batch was being written
    pending.restore(taken)
    again = pending.take()
    assert again.batch == [("1", {"10": (row("1", "10", "dnd"), 2.0), "11": (row("1", "11"), 1.0)})]


def test_a_full_sync_supersedes_older_rows_and_is_put_back_unless_done() -> None:
    pending = PendingWork(batch_max_rows=10, message_queue_max=10)
    pending.put(row("1", "10"), 1.0)
    pending.put(row("2", "10"), 1.0)
    pending.sync_guild("1")
    pending.sync_guild("2")
    taken = pending.take()
    assert taken.ops == {"1": GuildOp("sync"), "2": GuildOp("sync")}
    assert taken.batch == [] and taken.channel_syncs == {"1", "2"}
    taken.done_ops.add("1")  # written before the failure
    pending.restore(taken)
    assert pending.ops == {"2": GuildOp("sync")} and pending.channel_syncs == {"1", "2"}


def test_departure_drops_the_guilds_rows_and_a_rename_does_not_replace_it() -> None:
    pending = PendingWork(batch_max_rows=10, message_queue_max=10)
    pending.put(row("1", "10"), 1.0)
    pending.channel_syncs.add("1")
    pending.depart_guild("1")
    pending.rename_guild("1", "New name")
    assert pending.row_count == 0 and pending.ops == {"1": GuildOp("depart")}
    assert pending.channel_syncs == set()
    pending.rename_guild("2", "  ")
    assert pending.ops["2"] == GuildOp("rename", "2")  # a blank name falls back to the id


def test_chat_keeps_its_order_is_bounded_and_goes_back_in_front() -> None:
    pending = PendingWork(batch_max_rows=2, message_queue_max=3)
    lines = [ChatLine("1", "10", "5", str(i), f"line {i}\x00") for i in range(4)]
    assert [pending.relay(line) for line in lines] == [True, True, True, False]
    assert pending.messages_dropped == 1
    taken = pending.take()
    assert [m.text for m in taken.messages] == ["line 1", "line 2"]  # NUL removed, oldest dropped
    pending.relay(ChatLine("1", "10", "5", "9", "later"))
    pending.restore(taken)
    assert [m.text for m in pending.messages] == ["line 2", "line 3", "later"]  # the oldest beyond the bound
    assert pending.messages_dropped == 2


def test_reconcile_is_put_back_unless_a_newer_one_arrived() -> None:
    pending = PendingWork(batch_max_rows=2, message_queue_max=3)
    pending.reconcile = {"1"}
    taken = pending.take()
    pending.reconcile = {"1", "2"}
    pending.restore(taken)
    assert pending.reconcile == {"1", "2"}
    taken = pending.take()
    pending.restore(taken)
    assert pending.reconcile == {"1", "2"} and not pending.idle()
