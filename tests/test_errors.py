"""Every exception class the project defines derives from ``shared.errors.DzoneError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from shared.errors import DzoneError

PACKAGES = ("dzone", "shared", "ingest", "serve", "simulator")  # migrations/ defines no exception
NOT_IMPORTABLE = {"dzone.__main__"}  # importing it runs the ``dzone`` command


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")]
    return [name for name in names if name not in NOT_IMPORTABLE]


def exception_classes() -> list[type[BaseException]]:
    found = []
    for name in project_modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                found.append(value)
    return found


def test_the_walk_finds_the_exceptions() -> None:
    names = {cls.__name__ for cls in exception_classes()}
    assert {"ConfigError", "IngestError", "ServeError", "ClientFrameError", "SimulatorError"} <= names


@pytest.mark.parametrize("cls", exception_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_project_exception_is_a_dzone_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, DzoneError), cls.__mro__
