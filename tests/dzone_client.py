"""A model of the d-zone page (NNTin/d-zone 07811b9) as far as the town goes, written from the client's
source so tests can hold the serve to what a real page does (docs/protocol.md, Part 2 and rule 23):

* figures by uid: a ``presence`` for an unknown uid creates a figure, even one with ``delete``
  (src/script/actors/users.ts ``updateActor`` -> ``addActor``);
* the world: ``server-join`` rebuilds it sized from ``Object.keys(users).length`` (src/main.ts:550), entries
  without ``username`` are skipped (src/main.ts:590); its cells come from the client's random terrain
  (src/script/environment/world.ts ``generateWorld``, main island only, less the beacon's cell) and each new
  figure takes one for good (``randomEmptyGrid`` splices it out); with none left ``addActor`` throws;
* the start-up server and the login hold (src/main.ts:521-528, ``joinServer`` :702, ``getStartupServer``);
* the socket strategies: ``socketURL``, ``wss://<hostname><path>/ws``, then the author's server, tried one
  after the other on each close or error (src/main.ts:383-407, :668-690). The model records every URL it
  would open and opens only loopback ones;
* with ``reconnect_script``, the page as ``dzone serve --static-dir`` serves it (serve/web/dzone-reconnect.js):
  it offers the subprotocol ``dzone-reconnect``; a socket that opened reconnects to the same URL with the script's backoff, the new server-list is
  swallowed and the last ``connect`` sent again, the page never sees the close; other hosts are never opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from serve.handover import RECONNECTS

HERMES = "wss://hermes.nntin.xyz/dzone"
# serve/web/dzone-reconnect.js
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 10.0
FIRST_OPEN_PATIENCE_S = 10.0


def world_side(count: int) -> int:
    return max(24, math.floor(3.3 * math.sqrt(count) + 0.5) // 2 * 2)


def _fraction(values: list[float], index: float) -> float:
    low = math.floor(index)
    if low == index:
        return values[low]
    return values[low] + (values[math.ceil(index)] - values[low]) * (index - low)


def _noise_point(noise: list[list[float]], x: float, y: float) -> float:
    fx = math.floor(x)
    if fx == x:
        return _fraction(noise[fx], y)
    lower, upper = noise[fx], noise[math.ceil(x)]
    fy = math.floor(y)
    if fy == y:
        return _fraction([lower[fy], upper[fy]], x - fx)
    return _fraction([_fraction(lower, y), _fraction(upper, y)], x - fx)


def world_cells(count: int, rng: random.Random) -> int:
    """Free cells of one world the client generates for a join of ``count`` entries."""
    size = world_side(count)
    radius = size // 2

    def noise(width: float) -> list[list[float]]:
        n = math.ceil(width)
        return [[rng.random() for _ in range(n)] for _ in range(n)]

    big, small = noise(radius / 3 + 1), noise(radius / 1.5 + 1)
    big_blur, small_blur = (len(big) - 1) / size, (len(small) - 1) / size
    land = set()
    for tx in range(size):
        for ty in range(size):
            value = (_noise_point(big, tx * big_blur, ty * big_blur) + 2 * _noise_point(small, tx * small_blur, ty * small_blur)) / 3  # fmt: skip
            x, y = tx - radius, ty - radius
            if value / 1.1 < (radius - (abs(x) + abs(y)) / 2) / radius:
                land.add((x, y))
    seen: set[tuple[int, int]] = set()
    best: set[tuple[int, int]] = set()
    for cell in sorted(land):
        if cell in seen:
            continue
        island, stack = set(), [cell]
        seen.add(cell)
        while stack:
            x, y = stack.pop()
            island.add((x, y))
            for nx, ny in ((x, y - 1), (x + 1, y), (x, y + 1), (x - 1, y)):
                if (nx, ny) in land and (nx, ny) not in seen:
                    seen.add((nx, ny))
                    stack.append((nx, ny))
        if len(island) > len(best):
            best = island
    return len(best) - (1 if (0, 0) in best else 0)


class DzoneClient:
    """One page. ``figures`` uid -> what it draws; ``page_errors`` counts figures the world had no cell for."""

    def __init__(
        self,
        page_url: str,
        *,
        logged_in: bool = False,
        token: str = "token",
        seed: int = 1,
        local_storage: dict[str, str] | None = None,
        reconnect_script: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.page = urlsplit(page_url)
        self.params = dict(p.split("=", 1) for p in self.page.query.split("&") if "=" in p)
        self.logged_in = logged_in
        self.token = token
        self.rng = random.Random(seed)
        self.local_storage = local_storage if local_storage is not None else {}
        self.strategies = [u for u in (self.params.get("socketURL"),) if u]
        self.strategies += [f"wss://{self.page.hostname}{self.page.path.rstrip('/')}/ws", HERMES]
        self.opened: list[str] = []  # every URL the page would open a socket to, in order
        self.failures: list[str] = []
        self.unopened: list[str] = []  # sockets that never opened (refused, an HTTP error, a timeout)
        self.servers: dict[str, dict[str, Any]] | None = None
        self.server: str | None = None
        self.figures: dict[str, dict[str, Any]] = {}
        self.cells_left = 0
        self.page_errors = 0
        self.joins = 0
        self.alerts: list[str] = []
        self.pending_join: str | None = None
        self.sent: list[dict[str, Any]] = []
        self.ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnect_script = reconnect_script
        self.tls = tls
        self.own_hosts = {self.page.hostname} | {urlsplit(u).hostname for u in self.strategies[:-2]}
        self.blocked: list[str] = []  # URLs the script kept the page from opening
        self.last_connect: str | None = None
        self.outages: list[float] = []  # seconds from a socket's close to the next one's open
        self.rejoin_gaps: list[float] = []  # seconds from a socket's close to the fresh server-join
        self._closed_at: float | None = None

    # ------------------------------------------------------------ the socket

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def live(self) -> bool:
        return self.ws is not None

    async def _run(self) -> None:
        for url in self.strategies:
            if self.reconnect_script and urlsplit(url).hostname not in self.own_hosts:
                self.blocked.append(url)
                return  # the script never opens it: the page waits with its last town
            self.opened.append(url)
            if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
                await asyncio.sleep(1.0)  # not ours: the model never opens it; the page would, then move on
                continue
            if self.reconnect_script:
                await self._keep_open(url)
            else:
                await self._socket(url, reconnected=False)
            self.ws = None
            await asyncio.sleep(1.0)  # src/main.ts:674

    async def _socket(self, url: str, reconnected: bool) -> bool:
        """One socket until it closes; whether it opened. ``reconnected``: the script swallows the new
        server-list and sends the page's last ``connect`` again."""
        loop = asyncio.get_running_loop()
        opened = False
        try:
            offered = [Subprotocol(RECONNECTS)] if self.reconnect_script else None
            async with connect(url, open_timeout=5, max_size=None, ssl=self.tls, subprotocols=offered) as ws:
                opened, self.ws = True, ws
                if reconnected:
                    self.opened.append(url)
                    if self._closed_at is not None:
                        self.outages.append(loop.time() - self._closed_at)
                swallow = reconnected and self.servers is not None
                try:
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        if swallow and frame.get("type") == "server-list":
                            if self.last_connect is not None:
                                await ws.send(self.last_connect)
                        else:
                            self.on_frame(frame)
                        swallow = False
                finally:
                    self.ws = None
                    self._closed_at = loop.time()
        except (TimeoutError, OSError, ConnectionClosed, InvalidHandshake) as exc:
            self.failures.append(f"{url}: {exc!r}")  # the page logs it and moves on
            if not opened:
                self.unopened.append(f"{url}: {exc!r}")
        return opened

    async def _keep_open(self, url: str) -> None:
        """The reconnect script: the same URL again with its backoff, for good once a socket has opened."""
        loop = asyncio.get_running_loop()
        started, attempt, ever_open = loop.time(), 0, False
        while True:
            if await self._socket(url, reconnected=ever_open):
                ever_open, attempt = True, 0
            elif not ever_open and loop.time() - started > FIRST_OPEN_PATIENCE_S:
                return  # handed back to the page, which moves on
            bound = min(MAX_RETRY_S, FIRST_RETRY_S * 2**attempt)
            jittered = bound / 2 + self.rng.random() * bound / 2
            await asyncio.sleep(self.rng.random() * bound if attempt == 0 else jittered)
            attempt += 1

    async def _send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        text = orjson.dumps(frame).decode()
        if frame["type"] == "connect":
            self.last_connect = text
        if self.ws is not None:
            await self.ws.send(text)

    # ------------------------------------------------------------ what the page does with a frame

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind, data = frame.get("type"), frame.get("data")
        if kind == "server-list":
            self.servers = data
            startup = self.params.get("s") or self.local_storage.get("dzone-default-server") or "default"
            entry = (self.servers or {}).get(startup)
            if not entry or not entry["passworded"] or self.logged_in:
                self.join(startup)
            else:
                self.pending_join = startup
        elif kind == "server-join":
            assert isinstance(data, dict)
            if self._closed_at is not None and len(self.rejoin_gaps) < len(self.outages):
                self.rejoin_gaps.append(asyncio.get_running_loop().time() - self._closed_at)
            self.server = data["request"]["server"]
            self.local_storage["dzone-default-server"] = self.server
            self.joins += 1
            self.figures = {}
            self.cells_left = world_cells(len(data["users"]), self.rng)
            for user in data["users"].values():
                if user.get("username"):
                    self._add(user)
        elif kind == "presence":
            assert isinstance(data, dict)
            known = self.figures.get(data["uid"])
            if self.server is None:
                return  # no Users object yet
            if known is None:
                self._add(data)  # even for a delete (users.ts updateActor)
            elif data.get("delete"):
                del self.figures[data["uid"]]
            else:
                known["status"] = data["status"]
                if data.get("roleColor"):
                    known["roleColor"] = data["roleColor"]
        elif kind == "error":
            assert isinstance(data, dict)
            self.alerts.append(data["message"])
            if self.server is None:
                self.join("default")

    def _add(self, user: dict[str, Any]) -> None:
        if self.cells_left <= 0:
            self.page_errors += 1  # TypeError: Cannot read properties of undefined (reading 'split')
            return
        self.cells_left -= 1
        self.figures[user["uid"]] = {k: user.get(k) for k in ("uid", "username", "status", "roleColor")}

    def join(self, server: str) -> None:
        """joinServer (src/main.ts:702): the token goes only to an entry whose ``id`` is ``server``."""
        data: dict[str, Any] = {"server": server}
        entry = next((e for e in (self.servers or {}).values() if e["id"] == server), None)
        if entry and entry["passworded"] and self.logged_in:
            data["discordToken"] = self.token
        asyncio.get_running_loop().create_task(self._send({"type": "connect", "data": data}))
