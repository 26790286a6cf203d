"""The relay rule and readable chat as pure functions, against hand-built cases of Discord's rules."""

from __future__ import annotations

import pytest

from ingest.channels import (
    ADMINISTRATOR,
    OVERWRITE_MEMBER,
    OVERWRITE_ROLE,
    VIEW_CHANNEL,
    Overwrite,
    everyone_can_view,
    is_public,
    readable_text,
)

GUILD = 100
OTHER_ROLE = 200
MEMBER = 300
SEND = 1 << 11
BASE = VIEW_CHANNEL | SEND  # what @everyone usually has


def everyone(allow: int = 0, deny: int = 0) -> Overwrite:
    return Overwrite(GUILD, OVERWRITE_ROLE, allow, deny)


@pytest.mark.parametrize(
    ("base", "overwrites", "viewable"),
    [
        (BASE, [], True),  # no overwrites: the guild's base permissions
        (SEND, [], False),  # @everyone lacks VIEW_CHANNEL guild-wide
        (BASE, [everyone(deny=VIEW_CHANNEL)], False),  # the staff channel
        (SEND, [everyone(allow=VIEW_CHANNEL)], True),  # a channel opened to everyone in a closed guild
        (BASE, [everyone(allow=VIEW_CHANNEL, deny=VIEW_CHANNEL)], True),  # allow wins over deny
        (BASE, [everyone(deny=SEND)], True),  # read-only announcements stay public
        (BASE, [Overwrite(OTHER_ROLE, OVERWRITE_ROLE, 0, VIEW_CHANNEL)], True),  # another role's deny
        (SEND, [Overwrite(OTHER_ROLE, OVERWRITE_ROLE, VIEW_CHANNEL, 0)], False),  # another role's allow
        (BASE, [Overwrite(MEMBER, OVERWRITE_MEMBER, 0, VIEW_CHANNEL)], True),  # a member's deny
        (
            BASE,
            [Overwrite(GUILD, OVERWRITE_MEMBER, 0, VIEW_CHANNEL)],
            True,
        ),  # a member overwrite is not @everyone's
        (BASE | ADMINISTRATOR, [everyone(deny=VIEW_CHANNEL)], True),  # ADMINISTRATOR ignores overwrites
        (ADMINISTRATOR, [], True),
        (0, [], False),
    ],
)
def test_everyone_can_view_follows_discords_rules(
    base: int, overwrites: list[Overwrite], viewable: bool
) -> None:
    assert everyone_can_view(GUILD, base, overwrites) is viewable


def test_nsfw_is_never_public_and_a_synced_child_counts_through_its_copy() -> None:
    assert is_public(GUILD, BASE, [], nsfw=False)
    assert not is_public(GUILD, BASE, [], nsfw=True)
    assert not is_public(GUILD, BASE | ADMINISTRATOR, [], nsfw=True)
    category = [everyone(deny=VIEW_CHANNEL), Overwrite(OTHER_ROLE, OVERWRITE_ROLE, VIEW_CHANNEL, 0)]
    assert not is_public(GUILD, BASE, list(category), nsfw=False)  # the synced child carries a copy


NAMES = {
    "user": {1: "Ada Lovelace", 2: "bob"},
    "role": {10: "Moderators"},
    "channel": {20: "general"},
}


def readable(text: str) -> str:
    return readable_text(
        text,
        user=NAMES["user"].get,
        role=NAMES["role"].get,
        channel=NAMES["channel"].get,
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("hi <@1>", "hi @Ada Lovelace"),
        ("<@!2> and <@1>", "@bob and @Ada Lovelace"),
        ("<@999>", "@unknown-user"),
        ("ping <@&10>", "ping @Moderators"),
        ("<@&11>", "@unknown-role"),
        ("see <#20>", "see #general"),
        ("<#21>", "#unknown-channel"),
        ("nice <:pog:123456> <a:party_blob:789>", "nice :pog: :party_blob:"),
        (
            "**bold** `code` <t:1700000000:R> </cmd:1> @everyone",
            "**bold** `code` <t:1700000000:R> </cmd:1> @everyone",
        ),
        ("<@abc> <#> <:bad name:1>", "<@abc> <#> <:bad name:1>"),
        ("<@<@1>>", "<@@Ada Lovelace>"),
        ("", ""),
    ],
)
def test_readable_text(raw: str, shown: str) -> None:
    assert readable(raw) == shown
