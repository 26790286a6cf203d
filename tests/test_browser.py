"""The live view in headless Chromium against a real ``dzone serve`` and database.

The page loads from the serve, joins the default server, and follows changes made with SQL (which the
triggers announce, as they would a change from the ingest) and chat messages announced on the feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.browser import chromium, members_shown, save_screenshot, wait_until
from tests.serve_process import serve_process

STATUSES = ("online", "idle", "dnd", "offline")
MAIN_GUILD = "900000000000000001"
OTHER_GUILD = "900000000000000002"


def _seed_sql() -> tuple[str, dict[str, str]]:
    """Two servers; the default one has 40 members of whom the offline ones are hidden."""
    rows = []
    visible: dict[str, str] = {}
    colours = ("#e91e63", "#3498db", "#2ecc71", "#f1c40f", "#9b59b6", "#e67e22", "#1abc9c", "#ffffff")
    for i in range(40):
        uid = str(800000000000000000 + i)
        status = STATUSES[i % 4]
        rows.append(f"('{uid}', '{MAIN_GUILD}', 'member{i:02d}', '{status}', '{colours[i % len(colours)]}')")
        if status != "offline":
            visible[uid] = status
    for i in range(7):
        rows.append(f"('{810000000000000000 + i}', '{OTHER_GUILD}', 'other{i}', 'online', '#aabbcc')")
    sql = f"""
    INSERT INTO discord_servers (server_id, name, alias, is_default) VALUES
        ('{MAIN_GUILD}', 'Demo Guild', 'demo', TRUE), ('{OTHER_GUILD}', 'Second Guild', NULL, FALSE);
    INSERT INTO discord_users (user_id, server_id, username, status, role_color) VALUES {", ".join(rows)};
    """
    return sql, visible


@pytest.fixture
def serve_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A real ``dzone serve`` subprocess on a free port, serving the packaged live view."""
    with serve_process(database_url, tmp_path) as serve:
        yield serve.base


async def _sql(url: str, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


def test_live_view_follows_the_database(database_url: str, serve_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    seed, visible = _seed_sql()
    asyncio.run(_sql(database_url, seed))
    with chromium() as driver:
        driver.get(serve_url + "/")
        # the snapshot: every non-offline member of the default server, with its status
        wait_until(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "joined",
            "the page to join a server",
        )
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-server") == "demo"
        wait_until(driver, lambda d: members_shown(d) == visible, f"the {len(visible)} visible members")
        assert driver.find_element(By.ID, "member-count").text == str(len(visible))
        assert driver.find_element(By.ID, "count-idle").text == str(
            sum(s == "idle" for s in visible.values())
        )
        assert "?s=demo" in driver.current_url

        # a change made with SQL: one member goes idle, one leaves, one joins
        online_uid = next(uid for uid, status in visible.items() if status == "online")
        gone_uid = next(uid for uid, status in visible.items() if status == "dnd")
        new_uid = "820000000000000001"
        asyncio.run(
            _sql(database_url, "UPDATE discord_users SET status = 'idle' WHERE user_id = $1", online_uid)
        )
        asyncio.run(_sql(database_url, "DELETE FROM discord_users WHERE user_id = $1", gone_uid))
        asyncio.run(
            _sql(
                database_url,
                "INSERT INTO discord_users (user_id, server_id, username, status, role_color) "
                "VALUES ($1, $2, 'newcomer', 'online', '#ff00ff')",
                new_uid,
                MAIN_GUILD,
            )
        )
        expected = {**visible, online_uid: "idle", new_uid: "online"}
        del expected[gone_uid]
        wait_until(driver, lambda d: members_shown(d) == expected, "the SQL changes on the page")
        assert driver.find_element(By.ID, "member-count").text == str(len(expected))

        # a chat message announced on the feed appears under its author
        text = "hello from the browser test"
        asyncio.run(
            _sql(
                database_url,
                "SELECT dzone_notify_message($1, $2, $3, $4, $5)",
                MAIN_GUILD,
                new_uid,
                "700000000000000001",
                "700000000000000002",
                text,
            )
        )
        line = wait_until(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#chat-log li[data-uid="{new_uid}"]'),
            "the chat line",
        )[0]
        assert line.text == f"newcomer{text}" or line.text == f"newcomer {text}"
        shot = save_screenshot(driver, "live-view.png")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank image

        # the server picker switches to the other server's members
        Select(driver.find_element(By.ID, "server-picker")).select_by_visible_text("Second Guild")
        wait_until(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-server") == OTHER_GUILD,
            "the switch to the second server",
        )
        wait_until(driver, lambda d: len(members_shown(d)) == 7, "the second server's 7 members")
        assert driver.find_element(By.ID, "chat-log").text == ""
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
