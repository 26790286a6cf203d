"""Headless Chromium for tests: Debian's ``chromium`` + ``chromium-driver``, driven by Selenium.

Outside CI a machine without Chromium skips the browser tests with the reason; in CI (``CI`` set) a
missing browser fails them, so a broken install step cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)


def _find(*names: str) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return None


@contextmanager
def chromium(extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Selenium WebDriver on a fresh profile; quit and the profile removed on exit."""
    browser = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver", "chromium-driver")
    if browser is None or driver_path is None:
        reason = "Debian packages chromium and chromium-driver are not installed (see .ci/apt-packages.txt)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dzone-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + extra_flags:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``condition(driver)`` until truthy; on timeout fail with ``what`` and the browser console."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        console = "\n".join(str(entry) for entry in driver.get_log("browser"))
        pytest.fail(f"timed out after {timeout}s waiting for {what}; browser console:\n{console}")


def save_screenshot(driver: Any, name: str) -> Path:
    """Save a PNG under test-artifacts/ (gitignored; CI keeps it as an artifact)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"screenshot {path} failed"
    return path


def trusting(spki_hash: str) -> tuple[str, ...]:
    """Flags that make Chromium accept a chain holding this key (a test CA), as it does for a real one."""
    return (f"--ignore-certificate-errors-spki-list={spki_hash}",)


def members_shown(driver: Any) -> dict[str, str]:
    """uid -> status of every member the live view lists (read in one script: the list changes live)."""
    result = driver.execute_script(
        "return Array.from(document.querySelectorAll('#members li[data-uid]'),"
        " (li) => [li.dataset.uid, li.dataset.status]);"
    )
    return {uid: status for uid, status in result}
