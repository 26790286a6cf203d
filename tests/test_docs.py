"""The docs cannot drift from the code: docs/configuration.md against the settings classes, and the
runnable example of docs/python-api.md run against a real serve with a real WebSocket client."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import orjson
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings
from websockets.asyncio.client import connect

from shared import settings as settings_module
from shared.settings import _variable_name

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PYTHON_API = ROOT / "docs" / "python-api.md"
COMPOSE = ROOT / "docker-compose.yml"
# A table row that documents one variable: | `NAME` | default | process | meaning |
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|([^|]*)\|(.*)\|\s*$")
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
# The process column names processes by the settings class they load.
CLASS_OF_PROCESS = {"ingest": "IngestSettings", "serve": "ServeSettings"}


def settings_classes() -> list[type[BaseSettings]]:
    """Every public settings class of shared/settings.py, so a new class is checked without editing this."""
    return [
        cls
        for name, cls in vars(settings_module).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseSettings)
        and cls.__module__ == settings_module.__name__
        and not name.startswith("_")
    ]


def documented_rows(text: str) -> dict[str, tuple[str, str]]:
    """variable -> (default cell, process cell); a variable documented twice fails here."""
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        name, default, process = match.group(1), match.group(2).strip(), match.group(3).strip()
        assert name not in rows, f"{name} is documented twice in docs/configuration.md"
        rows[name] = (default, process)
    return rows


def fields() -> dict[str, list[tuple[type[BaseSettings], str]]]:
    """variable -> the (class, field) pairs that read it (inherited fields appear once per class)."""
    found: dict[str, list[tuple[type[BaseSettings], str]]] = {}
    for cls in settings_classes():
        for field in cls.model_fields:
            found.setdefault(_variable_name(cls, field), []).append((cls, field))
    return found


UNSET = "\N{EN DASH}"  # how the page writes "no default"


def shown_default(cell: str) -> str | None:
    """The default a cell states: the first `code` span, or None for a dash or "required" (unset)."""
    if cell.startswith((UNSET, "required")):
        return None
    match = re.match(r"`([^`]*)`", cell)
    assert match is not None, f"default cell {cell!r}: write `value`, {UNSET} (unset) or required"
    return match.group(1)


def matches(default: Any, shown: str) -> bool:
    if isinstance(default, bool):
        return shown == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(shown) == float(default)
        except ValueError:
            return False
    return shown == str(default)


def source_literals() -> str:
    """The project's Python source (not tests), where an environment variable outside the classes is read."""
    files = [p for p in ROOT.rglob("*.py") if not ({".venv", "tests", "bench"} & set(p.parts))]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def test_every_setting_has_exactly_one_row_with_its_default():
    rows = documented_rows(CONFIGURATION.read_text(encoding="utf-8"))
    problems = []
    for variable, owners in sorted(fields().items()):
        if variable not in rows:
            classes = ", ".join(sorted({cls.__name__ for cls, _ in owners}))
            problems.append(f"{variable} ({classes}) has no row in docs/configuration.md")
            continue
        default_cell, process_cell = rows[variable]
        cls, field = owners[0]
        info = cls.model_fields[field]
        if info.default is PydanticUndefined and info.default_factory is None:
            if not default_cell.startswith("required"):
                problems.append(f"{variable}: required, but the page shows {default_cell!r}")
            continue
        default = info.get_default(call_default_factory=True)
        shown = shown_default(default_cell)
        if default in (None, []):
            if shown is not None:
                problems.append(f"{variable}: unset by default, but the page shows {shown!r}")
        elif shown is None or not matches(default, shown):
            problems.append(f"{variable}: default {default!r}, but the page shows {default_cell!r}")
        owner_names = {c.__name__ for c, _ in owners}
        for process, class_name in CLASS_OF_PROCESS.items():
            if re.search(rf"\b{process}\b", process_cell) and class_name not in owner_names:
                problems.append(f"{variable}: the page says {process}, but {class_name} has no such field")
    assert not problems, "\n".join(problems)


def test_every_row_names_a_real_variable():
    rows = documented_rows(CONFIGURATION.read_text(encoding="utf-8"))
    compose = COMPOSE.read_text(encoding="utf-8")
    source = source_literals()
    known = set(fields())
    unknown = [
        name for name in rows if name not in known and name not in compose and f'"{name}"' not in source
    ]
    assert not unknown, f"rows naming no setting, compose variable or variable read by the code: {unknown}"


def test_every_compose_variable_has_a_row():
    rows = documented_rows(CONFIGURATION.read_text(encoding="utf-8"))
    used = set(COMPOSE_VARIABLE.findall(COMPOSE.read_text(encoding="utf-8")))
    assert used, "docker-compose.yml uses no ${VARIABLE}: the pattern is wrong"
    assert sorted(used - set(rows)) == []


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


async def test_the_python_api_example_serves_its_town_to_a_websocket_client(monkeypatch):
    """docs/python-api.md's example as written: its server list and members reach a real client, and the
    broadcast snippet below it moves a member."""
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the example needs no database
    blocks = python_blocks(PYTHON_API.read_text(encoding="utf-8"))
    (example,) = [b for b in blocks if "def build_server" in b]
    (broadcasts,) = [b for b in blocks if b.startswith("await server.broadcast_presence")]
    namespace: dict[str, Any] = {"__name__": "python_api_example"}
    exec(compile(example, str(PYTHON_API), "exec"), namespace)
    server = namespace["build_server"](port=0, host="127.0.0.1")
    await server.open()
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5) as ws:
            listing = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert listing["type"] == "server-list"
            assert listing["data"] == {
                "cafe": {
                    "id": "cafe",
                    "name": "Café",
                    "passworded": False,
                    "default": True,
                }  # rule 22: keyed by id
            }
            await ws.send(orjson.dumps({"type": "connect", "data": {"server": None}}).decode())
            join = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert join["type"] == "server-join", join
            assert join["data"]["request"]["server"] == "cafe"
            assert join["data"]["serverName"] == "Café"
            users = join["data"]["users"]
            assert {uid: (u["username"], u["status"]) for uid, u in users.items()} == {
                "1": ("Ada", "online"),
                "2": ("Brian", "idle"),
            }
            assert users["1"]["roleColor"] == "#3498db"
            assert users["2"]["roleColor"].lower() == "#99aab5"  # the guide's default for a missing colour

            flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            snippet = eval(
                compile(broadcasts, str(PYTHON_API), "exec", flags=flags), {**namespace, "server": server}
            )
            await snippet
            presence = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert presence["type"] == "presence"
            assert presence["data"]["uid"] == "2" and presence["data"]["status"] == "online"
            assert presence["data"]["username"] == "Brian"  # filled in from the snapshot
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert message["type"] == "message"
            assert message["data"] == {"uid": "1", "message": "hello", "channel": "42"}
    finally:
        await server.close()


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```$", flags=re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_between_the_documents_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif (
                anchor
                and linked.suffix == ".md"
                and anchor not in anchors(linked.read_text(encoding="utf-8"))
            ):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name}" not in readme]
    assert unlinked == []
