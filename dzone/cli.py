"""The ``dzone`` command line: one group, one subcommand per process or tool.

Subcommands live next to the code they run (``serve/cli.py``, ``ingest/cli.py``, ...) and are
imported only when invoked, so ``dzone migrate`` does not pay for discord.py or websockets.
"""

from __future__ import annotations

import importlib

import click

from shared.redaction import redact

# name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "migrate": "dzone.commands:migrate",
    "localdb": "dzone.commands:localdb",
    "simulate": "simulator.cli:simulate",
    "ingest": "ingest.cli:ingest",
    "serve": "serve.cli:serve",
    "demo": "dzone.demo:demo",
    "status": "dzone.status:status",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that part is not installed: behave as an unknown command
                return None
            raise
        command: click.Command = getattr(module, attribute)
        return command

    def invoke(self, ctx: click.Context) -> object:
        # Click prints these messages itself, outside logging: they are redacted here.
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            message = redact(exc.message)
            if message != exc.message:
                raise click.ClickException(message) from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dzone-pg")
def main() -> None:
    """dzone-pg: a PostgreSQL backend for d-zone (ingest from Discord, serve to browsers)."""
