"""A local Discord (gateway v10 + the REST routes discord.py uses) for tests, demos and benchmarks.

Not part of the production data path: the ingest only ever sees it through discord.py, exactly as it
would see discord.com. See docs/simulator.md.
"""

from shared.discord_rules import DEFAULT_ROLE_COLOR, point_discord_py
from simulator.config import SimConfig
from simulator.discordpy import point_discord_py_from_env
from simulator.server import Simulator
from simulator.world import (
    InvalidValueError,
    SimulatorError,
    UnknownObjectError,
    display_name,
    role_color,
)

__all__ = [
    "DEFAULT_ROLE_COLOR",
    "InvalidValueError",
    "SimConfig",
    "Simulator",
    "SimulatorError",
    "UnknownObjectError",
    "display_name",
    "point_discord_py",
    "point_discord_py_from_env",
    "role_color",
]
