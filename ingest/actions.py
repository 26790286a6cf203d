"""What each /dzone command does, as plain functions over a database connection (no discord.py here).

Each takes what the command needs (the server, the member acting) and returns the one answer the member
reads; a refusal the member can act on is a :class:`CommandRefused` with that answer. Changes run in one
transaction with their ``command_audit`` rows; the SQL is in ingest/command_queries.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from ingest import command_queries as sql
from shared.errors import DzoneError

ANSWER_MAX_CHARS = 2000  # Discord's message limit
ALIAS_CLEAR = "-"  # /dzone settings alias:- removes the alias (an alias cannot start with "-")
RECENT_CHANGES_SHOWN = 5

# The settings /dzone settings changes: option name -> discord_servers column.
SETTING_COLUMNS: Mapping[str, str] = {
    "hide_offline": "hide_offline",
    "relay_chat": "relay_messages",
    "passworded": "passworded",
    "alias": "alias",
}


class CommandRefused(DzoneError):
    """The command cannot do what was asked; the message is the answer the member reads."""


@dataclass(frozen=True)
class Actor:
    """Who uses a command, and where."""

    server_id: str
    user_id: str
    user_name: str


async def _server(conn: asyncpg.Connection, server_id: str, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(sql.SERVER_FOR_UPDATE if for_update else sql.SERVER, server_id)
    if row is None or not row["present"]:
        raise CommandRefused(
            "This server is not in the town yet: the bot is still reading it. Try again soon."
        )
    return row


async def _audit(conn: asyncpg.Connection, actor: Actor, command: str, changes: list[str]) -> None:
    await conn.execute(sql.AUDIT, actor.server_id, actor.user_id, actor.user_name[:100], command, changes)


def town_url(public_url: str, key: str) -> str:
    """The link a viewer opens: the public base with ``?s=`` the alias or the server id."""
    return f"{public_url.rstrip('/')}/?s={key}"


async def link(conn: asyncpg.Connection, server_id: str, public_url: str | None) -> str:
    """/dzone link: this server's town URL; for a passworded one, that a Discord login is needed."""
    if not public_url:
        raise CommandRefused("The town's address is not configured (the operator sets DZONE_PUBLIC_URL).")
    server = await _server(conn, server_id)
    if not server["enabled"]:
        raise CommandRefused("The town of this server is switched off by the operator.")
    answer = f"The town of **{server['name']}**: {town_url(public_url, server['alias'] or server_id)}"
    if server["passworded"]:
        answer += "\nIt asks you to log in with Discord: only members of this server can watch it."
    return answer


async def hide_me(conn: asyncpg.Connection, actor: Actor, command: str) -> str:
    """/dzone hide-me: the member's own ``hide_user`` rule (every viewer loses them at the commit)."""
    async with conn.transaction():
        await _server(conn, actor.server_id)
        added = (await conn.execute(sql.HIDE_SELF, actor.server_id, actor.user_id)).endswith(" 1")
        if added:
            await _audit(conn, actor, command, ["hide_user: hidden themself"])
    if not added:
        return "You were already hidden from the town. `/dzone show-me` brings you back."
    return "You are hidden from the town: viewers no longer see you. `/dzone show-me` brings you back."


async def show_me(conn: asyncpg.Connection, actor: Actor, command: str) -> str:
    """/dzone show-me: deletes only the member's own rule; an operator's rule or a role may still hide them."""
    async with conn.transaction():
        await _server(conn, actor.server_id)
        removed = (await conn.execute(sql.SHOW_SELF, actor.server_id, actor.user_id)).endswith(" 1")
        if removed:
            await _audit(conn, actor, command, ["hide_user: showed themself again"])
        still_hidden = await conn.fetchval(sql.MEMBER_HIDDEN, actor.server_id, actor.user_id)
    if still_hidden:
        prefix = "Your own hide is removed, but" if removed else "You had not hidden yourself, and"
        return f"{prefix} this server's rules (set by its admins) still leave you out of the town."
    if not removed:
        return "You were not hidden: viewers see you."
    return "You are back in the town: viewers see you again."


async def status(conn: asyncpg.Connection, server_id: str, *, viewers_window_s: float, relaying: bool) -> str:
    """/dzone status: members shown and hidden, viewers now, relayed channels, the last changes."""
    server = await _server(conn, server_id)
    counts = await conn.fetchrow(sql.MEMBER_COUNTS, server_id)
    viewers = await conn.fetchrow(sql.VIEWERS, server_id, viewers_window_s)
    lines = [f"**{server['name']}** in the town" + ("" if server["enabled"] else " (switched off)")]
    offline = "offline members hidden" if server["hide_offline"] else "offline members shown"
    lines.append(
        f"Members: {counts['members']}; shown now: {counts['shown']} ({offline}); "
        f"hidden by rules: {counts['hidden']} ({counts['hid_themselves']} of them with /dzone hide-me)"
    )
    replicas = viewers["replicas"]
    lines.append(
        f"Viewers now: {viewers['viewers']}"
        + (
            f" (on {replicas} serve processes)"
            if replicas > 1
            else ""
            if replicas
            else " (no serve reporting)"
        )
    )
    if not (server["relay_messages"] and relaying):
        lines.append("Chat: not relayed")
    else:
        channels = [record["name"] for record in await conn.fetch(sql.RELAYED_CHANNELS, server_id)]
        lines.append(
            f"Chat relayed from {len(channels)} channels: " + ", ".join(f"#{name}" for name in channels)
            if channels
            else "Chat: relayed, but no channel is public"
        )
    settings = ", ".join(
        f"{name}: {_shown(server[column])}"
        for name, column in SETTING_COLUMNS.items()
        if column != "relay_messages"
    )
    lines.append(f"Settings: {settings}")
    recent = await conn.fetch(sql.RECENT_CHANGES, server_id, RECENT_CHANGES_SHOWN)
    if recent:
        lines.append("Last changes from Discord:")
        lines += [
            f"- {r['at']:%Y-%m-%d %H:%M} UTC {r['user_name']} ({r['command']}): {r['change']}" for r in recent
        ]
    return _fit("\n".join(lines))


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _fit(text: str) -> str:
    return text if len(text) <= ANSWER_MAX_CHARS else text[: ANSWER_MAX_CHARS - 1] + "…"


async def change_settings(
    conn: asyncpg.Connection, actor: Actor, command: str, wanted: Mapping[str, bool | str | None]
) -> str:
    """/dzone settings: write the given settings (None: unchanged), audit each real change, in one transaction."""
    changes: list[str] = []
    async with conn.transaction():
        server = await _server(conn, actor.server_id, for_update=True)
        for option, value in wanted.items():
            column = SETTING_COLUMNS[option]
            if value is None:
                continue
            new = None if value == ALIAS_CLEAR and option == "alias" else value
            if new == server[column]:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql.SETTING_UPDATE.format(column=column), actor.server_id, new)
            except asyncpg.CheckViolationError:
                raise CommandRefused(
                    f"`{value}` cannot be an alias: 1 to 32 letters, digits, - and _, starting with a letter "
                    "or digit, not all digits (`-` removes the alias)."
                ) from None
            except asyncpg.UniqueViolationError:
                raise CommandRefused(f"The alias `{value}` is taken by another server.") from None
            changes.append(f"{option}: {_shown(server[column])} -> {_shown(new)}")
        if changes:
            await _audit(conn, actor, command, changes)
    if not changes:
        current = ", ".join(f"{name}: {_shown(server[column])}" for name, column in SETTING_COLUMNS.items())
        return f"Nothing changed. Settings: {current}"
    return "Changed (viewers follow at once): " + "; ".join(changes)
