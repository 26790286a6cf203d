"""The /dzone slash commands: discord.py's app commands on the ingest's client, on every shard.

The handlers are thin: each names its action (ingest/actions.py, plain functions over a connection) and
:meth:`CommandRunner.answer` does the rest: the Manage Server check of the admin commands, the database
connection, Discord's 3 s deadline (an answer not ready after ``DZONE_COMMAND_DEFER_AFTER_S`` is deferred
first, then sent as a follow-up), one clear line on any error (logged with its context).

Discord applies a command's default member permissions to top-level commands only, so ``/dzone`` is open
to every member and ``status``/``settings`` check Manage Server in the handler (docs/commands.md).
The commands are registered (one bulk overwrite of the global commands) after login, before the shards
connect; with ``DZONE_COMMANDS=false`` the overwrite is empty, which removes them from Discord.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import discord
import structlog
from discord import app_commands

from ingest import actions
from ingest.actions import Actor, CommandRefused
from shared.db import APP_INGEST_COMMANDS, DATABASE_ERRORS, create_pool
from shared.settings import IngestSettings

log = structlog.get_logger(__name__)

Action = Callable[[asyncpg.Connection], Awaitable[str]]

# The database did not answer (down, restarting, refusing us, too slow): the member is told so.
DATABASE_DOWN = "The town's database is not answering right now; please try again in a minute."
BROKEN = "Something went wrong on the bot's side; the operator will find it in the ingest's log."
VIEWERS_WINDOW_S = 30.0  # serve reports older than this do not count as viewers now
POOL_SIZE = 2
STATEMENT_TIMEOUT_S = 30.0


class CommandRunner:
    """Runs one command's action against the database and answers the interaction in time."""

    def __init__(self, settings: IngestSettings) -> None:
        if not settings.database_url:
            raise ValueError("the commands need DATABASE_URL")
        self.database_url = settings.database_url
        self.pooler = settings.database_pooler
        self.public_url = settings.public_url
        self.defer_after_s = settings.command_defer_after_s
        self.relaying = settings.relay_messages
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self.answered = 0
        self.deferred = 0
        self.failed = 0

    async def _connection_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await create_pool(
                    self.database_url,
                    min_size=0,
                    max_size=POOL_SIZE,
                    timeout=5.0,
                    application_name=APP_INGEST_COMMANDS,
                    pooler=self.pooler,
                )
            return self._pool

    async def _run(self, action: Action) -> str:
        pool = await self._connection_pool()
        async with pool.acquire(timeout=10.0) as conn:
            return await asyncio.wait_for(action(conn), STATEMENT_TIMEOUT_S)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- answering ----------------------------------------------------------------------------------
    async def answer(
        self,
        interaction: discord.Interaction,
        command: str,
        action: Callable[[Actor], Action],
        *,
        admin: bool = False,
    ) -> None:
        """Answer ``interaction`` (ephemeral) with what ``action`` returns, deferring when it takes long."""
        started = time.monotonic()
        deferred = False
        context: dict[str, object] = {
            "command": command,
            "server_id": interaction.guild_id,
            "user_id": interaction.user.id,
            "interaction_id": interaction.id,
        }
        try:
            if interaction.guild_id is None:
                raise CommandRefused("Use /dzone in a server: it acts on that server's town.")
            granted = interaction.permissions
            if admin and not (granted.manage_guild or granted.administrator):
                raise CommandRefused(f"`{command}` is for members with the Manage Server permission.")
            actor = Actor(str(interaction.guild_id), str(interaction.user.id), interaction.user.name)
            job = asyncio.ensure_future(self._run(action(actor)))
            try:
                text = await asyncio.wait_for(asyncio.shield(job), self.defer_after_s)
            except TimeoutError:
                if job.done():  # finished (or failed) as the wait ended: its own outcome counts
                    text = job.result()
                else:
                    # Discord drops an interaction unanswered for 3 s: say "thinking…", answer later.
                    await interaction.response.defer(ephemeral=True, thinking=True)
                    deferred = True
                    self.deferred += 1
                    log.info("command_deferred", **context, after_s=round(time.monotonic() - started, 3))
                    text = await job
        except CommandRefused as exc:
            text = str(exc)
            log.info("command_refused", **context, answer=text)
        except DATABASE_ERRORS as exc:
            text = DATABASE_DOWN
            self.failed += 1
            log.error("command_database_failed", **context, error=f"{type(exc).__name__}: {exc}")
        except discord.HTTPException as exc:  # the deferral itself was refused: nothing more can be sent
            self.failed += 1
            log.error("command_defer_failed", **context, error=f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a bug of ours: logged with its traceback, the member told in one line
            text = BROKEN
            self.failed += 1
            log.error("command_failed", **context, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        await self._send(interaction, text, deferred, context, started)

    async def _send(
        self,
        interaction: discord.Interaction,
        text: str,
        deferred: bool,
        context: dict[str, object],
        started: float,
    ) -> None:
        try:
            if deferred:
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except (
            discord.HTTPException
        ) as exc:  # too late (10062), or Discord refused it: logged, nothing to retry
            self.failed += 1
            log.error("command_answer_failed", **context, error=f"{type(exc).__name__}: {exc}")
            return
        self.answered += 1
        log.info(
            "command_answered", **context, deferred=deferred, seconds=round(time.monotonic() - started, 3)
        )


class DzoneCommands(app_commands.Group):
    """``/dzone link | hide-me | show-me | status | settings``: each hands its action to the runner."""

    def __init__(self, runner: CommandRunner) -> None:
        super().__init__(name="dzone", description="This server's d-zone town", guild_only=True)
        self.runner = runner

    @app_commands.command(name="link", description="The address of this server's town")
    async def link(self, interaction: discord.Interaction) -> None:
        url = self.runner.public_url
        await self.runner.answer(
            interaction, "/dzone link", lambda actor: lambda c: actions.link(c, actor.server_id, url)
        )

    @app_commands.command(
        name="hide-me", description="Leave the town: viewers stop seeing you on this server"
    )
    async def hide_me(self, interaction: discord.Interaction) -> None:
        await self.runner.answer(
            interaction, "/dzone hide-me", lambda actor: lambda c: actions.hide_me(c, actor, "/dzone hide-me")
        )

    @app_commands.command(name="show-me", description="Come back to the town after /dzone hide-me")
    async def show_me(self, interaction: discord.Interaction) -> None:
        await self.runner.answer(
            interaction, "/dzone show-me", lambda actor: lambda c: actions.show_me(c, actor, "/dzone show-me")
        )

    @app_commands.command(
        name="status", description="Admins: members shown and hidden, viewers, relayed chat"
    )
    async def status(self, interaction: discord.Interaction) -> None:
        relaying = self.runner.relaying
        await self.runner.answer(
            interaction,
            "/dzone status",
            lambda actor: (
                lambda c: actions.status(
                    c, actor.server_id, viewers_window_s=VIEWERS_WINDOW_S, relaying=relaying
                )
            ),
            admin=True,
        )

    @app_commands.command(name="settings", description="Admins: change how the town shows this server")
    @app_commands.describe(
        hide_offline="Leave offline members out of the town",
        relay_chat="Show chat bubbles from public channels",
        passworded="Only members of this server, logged in with Discord, can watch",
        alias="A short name for the link (letters, digits, - and _); - removes it",
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        hide_offline: bool | None = None,
        relay_chat: bool | None = None,
        passworded: bool | None = None,
        alias: str | None = None,
    ) -> None:
        wanted = {
            "hide_offline": hide_offline,
            "relay_chat": relay_chat,
            "passworded": passworded,
            "alias": alias,
        }
        await self.runner.answer(
            interaction,
            "/dzone settings",
            lambda actor: lambda c: actions.change_settings(c, actor, "/dzone settings", wanted),
            admin=True,
        )


class CommandTree(app_commands.CommandTree[discord.Client]):
    """discord.py's tree; its errors (an unknown command, a bad option) are logged with context."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        log.error(
            "command_tree_error",
            command=interaction.command.qualified_name if interaction.command else None,
            server_id=interaction.guild_id,
            user_id=interaction.user.id,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )
        if not interaction.response.is_done():
            await interaction.response.send_message("This command is not available here.", ephemeral=True)


class SlashCommands:
    """The tree on the ingest's client, and its registration with Discord after login."""

    def __init__(self, client: discord.Client, settings: IngestSettings) -> None:
        self.enabled = settings.commands
        self.runner = CommandRunner(settings)
        self.tree = CommandTree(client)
        if self.enabled:
            self.tree.add_command(DzoneCommands(self.runner))

    async def register(self) -> None:
        """One bulk overwrite of the global commands (empty when off, which removes them)."""
        try:
            registered = await self.tree.sync()
        except discord.HTTPException as exc:  # the ingest's data path does not need them: it goes on
            log.error("commands_not_registered", error=f"{type(exc).__name__}: {exc}", enabled=self.enabled)
            return
        log.info("commands_registered", names=[c.name for c in registered], enabled=self.enabled)

    async def close(self) -> None:
        await self.runner.close()
