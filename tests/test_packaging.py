"""The package builds and stays pinned: a wheel with the build-system's floor setuptools (no isolation),
the LICENSE in it, and every dependency pinned in constraints.txt within pyproject's range, which the
Dockerfile and the Makefile install from."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    project = PYPROJECT["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} is not pinned in constraints.txt: regenerate it (its header)"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject's {requirement.specifier}"
        )


def test_the_image_and_the_makefile_install_from_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY " in dockerfile and "constraints.txt" in dockerfile
    assert re.search(r"pip install -c constraints\.txt -e \.", dockerfile)
    assert "pip install -q -c constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text()


def test_a_wheel_builds_without_isolation_on_the_floor_setuptools(tmp_path: Path) -> None:
    """`pip wheel --no-build-isolation` in a throwaway venv holding exactly the build-system's floor."""
    (floor,) = PYPROJECT["build-system"]["requires"]
    requirement = Requirement(floor)
    (minimum,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    # A copy of the sources: an in-tree build would leave build/ and *.egg-info in the worktree.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "bench")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    installed = subprocess.run(
        [*pip, "install", f"setuptools=={minimum}.*", "wheel"], capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    built = subprocess.run(
        [*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, f"the wheel does not build on setuptools {minimum}:\n{built.stderr[-3000:]}"
    (wheel,) = (tmp_path / "dist").glob("dzone_pg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: MIT" in metadata
    assert "MIT License" in (ROOT / "LICENSE").read_text()
