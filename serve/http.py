"""Plain HTTP on the WebSocket port (rule 19): version, health, metrics and static files, GET and HEAD.

Static files are served from one root (``--static-dir`` or the packaged ``serve/web``); the resolved
path must stay inside it (``Path.is_relative_to``, not a string prefix: d-back fault 5).
"""

from __future__ import annotations

import asyncio
import email.utils
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PACKAGED_WEB = Path(__file__).resolve().parent / "web"
MAX_STATIC_BYTES = 32 * 1024 * 1024  # a d-zone build's largest file is a few MB
MAX_PATH_CHARS = 1024  # a d-zone build's longest path is under 100 characters

# Names d-zone's build uses that mimetypes may not know everywhere.
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".woff2": "font/woff2",
}


def is_upgrade(request: Request) -> bool:
    """The request asks for a WebSocket (d-back's test: Upgrade: websocket and Connection contains upgrade)."""
    upgrade = request.headers.get("Upgrade", "")
    connection = request.headers.get("Connection", "")
    return upgrade.lower() == "websocket" and "upgrade" in connection.lower()


def response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    head: bool = False,
    cache: str = "no-store",
    extra: dict[str, str] | None = None,
    length: int | None = None,
) -> Response:
    """A complete response: Content-Type, Content-Length and Cache-Control always; no body for HEAD."""
    headers = Headers()
    headers["Date"] = email.utils.formatdate(usegmt=True)
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body) if length is None else length)
    headers["Cache-Control"] = cache
    headers["Connection"] = "close"
    for name, value in (extra or {}).items():
        headers[name] = value
    phrase = HTTPStatus(status).phrase
    return Response(status, phrase, headers, b"" if head else body)


def json_response(status: int, payload: object, *, head: bool = False) -> Response:
    return response(status, orjson.dumps(payload), "application/json", head=head)


def text_response(
    status: int, text: str, *, head: bool = False, extra: dict[str, str] | None = None
) -> Response:
    return response(status, text.encode(), "text/plain; charset=utf-8", head=head, extra=extra)


def request_path(request: Request) -> str:
    """The decoded path without query string (split by hand: urlsplit raises on "//[x" and would read
    "//host/x" as a host)."""
    return unquote(request.path.partition("?")[0].partition("#")[0]) or "/"


def content_type_of(path: Path) -> str:
    kind = (
        _EXTRA_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    )
    if kind.startswith("text/") or kind in ("application/json", "application/javascript"):
        kind += "; charset=utf-8"
    return kind


def resolve_static(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or None when missing, outside ``root`` or not a
    name the file system can hold (too long, NUL, unencodable): a client's mistake is a 404, never a 500."""
    relative = url_path.lstrip("/") or "index.html"
    if "\x00" in relative or len(relative) > MAX_PATH_CHARS:
        return None
    try:
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root):
            return None
        if candidate.is_dir():
            candidate = candidate / "index.html"
        return candidate if candidate.is_file() else None
    except (OSError, RuntimeError, ValueError):  # ENAMETOOLONG, a symlink loop, a surrogate or NUL
        return None


async def file_response(path: Path, *, head: bool, content_type: str | None = None) -> Response:
    """A file from disk, read off the event loop; html is revalidated, assets cached for an hour.
    A file that vanished or cannot be read between resolving and reading is a 404."""
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
        if size > MAX_STATIC_BYTES:
            return text_response(413, "File too large to serve\n", head=head)
        body = b"" if head else await asyncio.to_thread(path.read_bytes)
    except (OSError, ValueError):
        return not_found(head)
    kind = content_type or content_type_of(path)
    cache = "no-cache" if kind.startswith("text/html") else "public, max-age=3600"
    return response(200, body, kind, head=head, cache=cache, length=size)


RECONNECT_SCRIPT = PACKAGED_WEB / "dzone-reconnect.js"
RECONNECT_PATH = "/dzone-reconnect.js"
# Relative, as the client's own bundle is: the page may sit under a path prefix behind a proxy.
_RECONNECT_TAG = b'<script src="dzone-reconnect.js"></script>'
_FIRST_SCRIPT = re.compile(rb"<script\b", re.IGNORECASE)
_HEAD_OPEN = re.compile(rb"<head\b[^>]*>", re.IGNORECASE)


def is_client_page(url_path: str) -> bool:
    """The d-zone client's page (a static dir's root index.html), the one our reconnect script goes into."""
    return url_path in ("/", "/index.html")


def with_reconnect_script(page: bytes) -> bytes:
    """``page`` with our reconnect script loaded before its first script (the bundle), so the bundle's
    ``new WebSocket`` gets the wrapper; after ``<head>`` (or first) when the page has no script yet."""
    if first := _FIRST_SCRIPT.search(page):
        at = first.start()
    elif head := _HEAD_OPEN.search(page):
        at = head.end()
    else:
        at = 0
    return page[:at] + _RECONNECT_TAG + b"\n" + page[at:]


async def client_page_response(path: Path, *, head: bool) -> Response:
    """The client's index.html with our reconnect script added (docs/deploy.md, "Restarts")."""
    try:
        page = await asyncio.to_thread(path.read_bytes)
    except (OSError, ValueError):
        return not_found(head)
    if len(page) > MAX_STATIC_BYTES:
        return text_response(413, "File too large to serve\n", head=head)
    return response(200, with_reconnect_script(page), "text/html; charset=utf-8", head=head, cache="no-cache")


def not_found(head: bool) -> Response:
    return text_response(404, "Not Found\n", head=head)
