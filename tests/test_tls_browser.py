"""The live view in Chromium over https:// + wss://: from the serve's own TLS port, and through the nginx recipe.

Chromium trusts the test CA the way it would trust a real one for this key (``trusting``), so a wrong
name, an expired or unrelated certificate would still fail; the page joins and draws the members.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.browser import chromium, members_shown, trusting, wait_until
from tests.certs import LocalCA
from tests.nginx import nginx_in_front
from tests.serve_process import serve_process
from tests.test_browser import _seed_sql, _sql


def _page_draws_members(base: str, ca: LocalCA, visible: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    with chromium(trusting(ca.spki_hash())) as driver:
        driver.get(base + "/")

        def joined(d: Any) -> bool:
            return bool(d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "joined")

        wait_until(driver, joined, "the page to join a server over wss://")
        assert driver.execute_script("return location.protocol") == "https:"
        wait_until(driver, lambda d: members_shown(d) == visible, f"the {len(visible)} visible members")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors


def test_live_view_over_native_tls(database_url: str, tmp_path: Path) -> None:
    seed, visible = _seed_sql()
    asyncio.run(_sql(database_url, seed))
    ca = LocalCA(tmp_path / "ca")
    pair = ca.issue()
    env = {"DZONE_TLS_CERT_FILE": str(pair.cert_file), "DZONE_TLS_KEY_FILE": str(pair.key_file)}
    with serve_process(database_url, tmp_path, env, client_tls=ca.client_context()) as serve:
        _page_draws_members(serve.base, ca, visible)


def test_live_view_through_the_nginx_recipe(database_url: str, tmp_path: Path) -> None:
    seed, visible = _seed_sql()
    asyncio.run(_sql(database_url, seed))
    ca = LocalCA(tmp_path / "ca")
    pair = ca.issue()
    with (
        serve_process(database_url, tmp_path) as serve,
        nginx_in_front([serve.port], pair, tmp_path / "nginx", ca.client_context()) as proxy,
    ):
        _page_draws_members(proxy.base, ca, visible)
