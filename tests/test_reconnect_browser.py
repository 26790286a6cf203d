"""Our reconnect script (serve/web/dzone-reconnect.js) in headless Chromium across a restart on one port.

``dzone serve --static-dir`` serves a page that opens its socket as the d-zone client does (src/main.ts
:383-407, :668-690: ``socketURL``, then ``wss://<host>/ws``, then the author's server, the next one a second
after a close or error; ``connect`` on the server-list; the town rebuilt on each server-join). The serve
adds our script before the page's own. The serve is then replaced by a new one on the same port: the page
must end with a live socket, a fresh server-join and a change that arrived after it, never having seen a
close nor tried another URL.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.browser import chromium, wait_until
from tests.serve_process import free_port, http_status, serve_process
from tests.test_serve_support import add_server, add_users

GUILD = "100000000000000001"
USERS = {f"2000000000000000{i:02d}": (f"user{i}", "online", "#112233") for i in range(3)}

# The client's socket handling, cut down to what the restart touches (no bundle: CI cannot fetch it).
CLIENT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>d-zone socket</title></head>
<body>
<script>
window.page = { tried: [], closes: 0, errors: 0, joins: [], presences: [] };
var strategies = [];
var named = new URLSearchParams(location.search).get("socketURL");
if (named) strategies.push(named);
strategies.push("wss://" + location.hostname + location.pathname.replace(/\\/$/, "") + "/ws");
strategies.push("wss://hermes.nntin.xyz/dzone");
var index = 0;
function next() {
  if (index >= strategies.length) return;
  var strategy = strategies[index];
  window.page.tried.push(strategy);
  var ws = window.ws = new WebSocket(strategy);
  ws.addEventListener("message", function (event) {
    var data = JSON.parse(event.data);
    if (data.type === "server-list") ws.send(JSON.stringify({ type: "connect", data: { server: "default" } }));
    else if (data.type === "server-join") window.page.joins.push(Object.keys(data.data.users).length);
    else if (data.type === "presence") window.page.presences.push(data.data.uid + ":" + data.data.status);
  });
  function moveOn() {
    if (index === strategies.indexOf(strategy)) { index++; setTimeout(next, 1000); }
  }
  ws.addEventListener("close", function () { window.page.closes++; moveOn(); });
  ws.addEventListener("error", function () { window.page.errors++; moveOn(); });
}
next();
</script>
</body></html>
"""


def _page(driver: Any) -> dict[str, Any]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return Object.assign({}, window.page, {state: window.ws && window.ws.readyState,"
        " reconnect: window.dzoneReconnect});"
    )


async def _seed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await add_server(conn, GUILD, is_default=True)
        await add_users(conn, GUILD, USERS)
    finally:
        await conn.close()


async def _set_status(database_url: str, uid: str, status: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE discord_users SET status = $2 WHERE user_id = $1", uid, status)
    finally:
        await conn.close()


def test_the_page_keeps_its_socket_across_a_restart_on_the_same_port(
    database_url: str, tmp_path: Path
) -> None:
    asyncio.run(_seed(database_url))
    static = tmp_path / "client"
    static.mkdir()
    (static / "index.html").write_text(CLIENT_PAGE)
    port = free_port()
    ours = f"ws://127.0.0.1:{port}/ws"
    env = {"DZONE_STATIC_DIR": str(static)}
    with (
        chromium() as driver,
        serve_process(database_url, tmp_path, {**env, "DZONE_DRAIN_S": "30"}, port=port) as old,
    ):
        driver.get(f"{old.base}/?socketURL={ours}")
        source = driver.page_source
        assert source.index("dzone-reconnect.js") < source.index("window.page ="), "our script comes first"
        wait_until(driver, lambda d: _page(d)["joins"] == [3], "the first server-join")
        assert _page(driver)["reconnect"]["sockets"] == [ours]

        old.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while http_status(f"{old.base}/healthz") is not None:  # the old serve closes its listener at once
            assert time.monotonic() < deadline, "the draining serve kept accepting"
            time.sleep(0.05)  # polling another process's port
        with serve_process(database_url, tmp_path, {**env, "DZONE_DRAIN_S": "0"}, port=port):
            wait_until(driver, lambda d: _page(d)["joins"] == [3, 3], "a fresh server-join", timeout=45)
            assert old.process.wait(timeout=30) == 0, old.output()
            uid = next(iter(USERS))
            asyncio.run(_set_status(database_url, uid, "dnd"))
            wait_until(driver, lambda d: f"{uid}:dnd" in _page(d)["presences"], "a change after the restart")
            page = _page(driver)
    print(f"\nreconnect script in Chromium: {page['reconnect']}")
    assert page["state"] == 1, "the page's socket is not open"
    assert (page["tried"], page["closes"], page["errors"]) == ([ours], 0, 0), "the page saw the restart"
    reconnect = page["reconnect"]
    assert isinstance(reconnect, dict)
    assert reconnect["reconnects"] == 1 and reconnect["blocked"] == []
    assert set(reconnect["sockets"]) == {ours}
