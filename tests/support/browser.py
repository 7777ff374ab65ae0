"""A headless Chromium from the OS packages, driven by Selenium; fixture ``browser`` (tests/conftest.py imports it).

Nothing is downloaded: the driver's path is given, so Selenium Manager is skipped (and told to stay offline). Without
Chromium the test skips and says how to install it; under CI (env CI set) it fails instead, as the broker tests do.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def artifacts_dir() -> Path:
    """Where screenshots are kept for whoever reads a test run: build/test-artifacts, or TEST_ARTIFACTS_DIR."""
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require_chromium() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing; CI must run the browser tests (.ci/run installs them)")
    pytest.skip(f"{', '.join(missing)} missing: install them with `apt-get install chromium chromium-driver`")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A Chrome WebDriver on the system Chromium, 1280x900, its console log readable; quit even when a test fails."""
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, downloads nothing
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
