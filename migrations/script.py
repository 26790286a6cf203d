"""SQL scripts of the migrations, split into statements: asyncpg runs one statement a call."""

from __future__ import annotations


def statements(script: str) -> list[str]:
    """Split a script on top-level semicolons at line ends (not inside $$ bodies)."""
    found, current, in_body = [], [], False
    for line in script.splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            found.append("\n".join(current).strip().rstrip(";"))
            current = []
    rest = "\n".join(current).strip()
    return [*found, rest] if rest else found
