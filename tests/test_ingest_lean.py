"""The lean event path: the member table from raw payloads, and the discord.py internals it relies on."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from ingest.gateway import IngestClient
from ingest.mapping import MemberRow, RoleView
from ingest.members import BOT, GuildMembers
from ingest.payloads import MemberPayload, UserPayload

GUILD = 100
RED, BLUE = 0xFF0000, 0x0000FF


def member(
    user_id: int, *, nick: str | None = None, roles: tuple[int, ...] = (), bot: bool = False
) -> MemberPayload:
    user: UserPayload = {"id": str(user_id), "username": f"user{user_id}", "global_name": None, "bot": bot}
    return {"user": user, "nick": nick, "roles": [str(r) for r in roles]}


def table() -> GuildMembers:
    return GuildMembers(
        GUILD, {1: RoleView(1, 1, RED), 2: RoleView(2, 2, BLUE), GUILD: RoleView(0, GUILD, 0)}
    )


class Recorder:
    """Stands in for the writer: what the handlers hand over."""

    def __init__(self) -> None:
        self.rows: list[MemberRow] = []
        self.removed: list[tuple[str, str]] = []

    def put(self, row: MemberRow) -> None:
        self.rows.append(row)

    def remove(self, server_id: str, user_id: str) -> None:
        self.removed.append((server_id, user_id))


def client_with(members: GuildMembers) -> tuple[IngestClient, Recorder]:
    client = IngestClient(
        include_bots=False, relay_messages=False, shard_count=1, shard_ids=None, guild_ready_timeout=0.1
    )
    recorder = Recorder()
    client.writer = recorder  # type: ignore[assignment]
    client.members[members.id] = members
    return client, recorder


def presence(user_id: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"guild_id": str(GUILD), "user": {"id": str(user_id)}, "status": status, **extra}


def test_a_member_is_four_references_and_role_sets_are_shared() -> None:
    members = table()
    members.add_chunk([member(10, roles=(2, 1)), member(11, roles=(1, 2))], {10: "online"})
    ten, eleven = members.get_member(10), members.get_member(11)
    assert ten is not None and eleven is not None
    assert ten.roles is eleven.roles == (1, 2)  # one tuple for the set
    assert not hasattr(ten, "__dict__") and len(type(ten).__slots__) == 4
    assert (ten.status, eleven.status) == ("online", "offline")


def test_colour_follows_the_highest_coloured_role_and_role_changes() -> None:
    members = table()
    members.add_chunk([member(10, roles=(1, 2)), member(11, roles=(1,))], {})
    assert members.row(10, members.members[10]).role_color == "#0000ff"
    members.set_role(RoleView(3, 1, RED))  # role 1 moved above role 2
    assert members.row(10, members.members[10]).role_color == "#ff0000"
    members.delete_role(1)
    assert [members.row(u, m).role_color for u, m in members.members.items()] == ["#0000ff", "#99aab5"]
    assert [user_id for user_id, _ in members.holding(2)] == [10]


def test_a_chunk_keeps_a_cached_member_and_an_update_reports_real_changes() -> None:
    members = table()
    members.add_chunk([member(10, nick="Nick")], {10: "idle"})
    assert members.add_chunk([member(10), member(11)], {}) == [11]  # 10 is cached: newer than the chunk
    assert members.members[10].name == "Nick" and members.members[10].status == "idle"
    _, _, changed = members.upsert(member(10, nick="Nick"))
    assert not changed
    _, ten, changed = members.upsert(member(10, nick=None, roles=(1,)))
    assert changed and ten.name == "user10" and ten.status == "idle"


def test_presence_queues_only_a_status_change_and_ignores_activities_and_client_status() -> None:
    members = table()
    members.add_chunk([member(10), member(11, bot=True)], {10: "online"})
    client, writer = client_with(members)
    parse = client._connection.parsers["PRESENCE_UPDATE"]
    parse(presence(10, "online", activities=[{"name": "a game", "type": 0}], client_status={"web": "online"}))
    assert writer.rows == []  # nothing in the row changed
    parse(presence(10, "dnd", client_status={"mobile": "online"}))
    parse(presence(10, "invisible"))
    parse(presence(11, "idle"))  # a bot: not stored
    assert writer.rows == [
        MemberRow(str(GUILD), "10", "user10", "dnd", "#99aab5"),
        MemberRow(str(GUILD), "10", "user10", "offline", "#99aab5"),
    ]
    assert members.members[11].status == "idle" and members.members[11].flags & BOT
    assert client.event_counts["presence_update"] == 4


def test_a_presence_before_the_member_is_kept_and_put_on_it_when_it_joins() -> None:
    members = table()
    client, writer = client_with(members)
    client._connection.parsers["PRESENCE_UPDATE"](presence(12, "idle"))
    assert client.held_presences.counts()["held"] == 1 and writer.rows == []
    client._connection.parsers["GUILD_MEMBER_UPDATE"]({**member(12, roles=(1,)), "guild_id": str(GUILD)})
    assert writer.rows == [MemberRow(str(GUILD), "12", "user12", "idle", "#ff0000", "1")]
    assert client.held_presences.counts()["applied"] == 1


def test_a_failing_parser_is_logged_and_the_next_event_is_handled() -> None:
    members = table()
    members.add_chunk([member(10)], {})
    client, writer = client_with(members)
    parse = client._connection.parsers["PRESENCE_UPDATE"]
    with capture_logs() as logs:
        parse({"guild_id": str(GUILD), "user": {}, "status": "online"})  # no user id
    assert [(e["event"], e["gateway_event"], e["guild_id"]) for e in logs] == [
        ("parser_failed", "PRESENCE_UPDATE", str(GUILD))
    ]
    parse(presence(10, "online"))
    assert [row.status for row in writer.rows] == ["online"]
