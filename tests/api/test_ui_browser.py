"""The status page in a real headless Chromium against a real service: sign in, figures equal /api/stats, a bulk
retry through its dry run, a phone's width, no console error; on Bitable the outbox and the Feishu calls too.
Screenshots are kept in build/test-artifacts (TEST_ARTIFACTS_DIR)."""

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import artifacts_dir
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.processes import running_service, wait_until

pytestmark = pytest.mark.slow

KEY = "status-page-key-7d1e"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + "".join(f'  File "/srv/worker/step_{n}.py", line {n}, in run\n    step_{n}()\n' for n in range(12))
    + "ValueError: the series has no close for 2026-11-30"
)
ERRORS = [  # one long and collapsed, one that would run script if it were ever written as markup, one plain
    TRACEBACK,
    '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>',
    "timeout after 30s",
]
WORKER_ERRORS = [TRACEBACK, "TimeoutError: the data source did not answer within 30 s", "HTTPError: 502 Bad Gateway"]


def seed(url: str, errors: list[str] = ERRORS) -> None:
    """Through the API, as callers would: 20 tasks, four cycles (the last skipped: the queue is full enough),
    three workers' failures with their errors and four successes."""
    auth = {"X-API-Key": KEY}
    ingested = httpx.post(f"{url}/api/tasks/ingest", json=[{"n": n} for n in range(20)], headers=auth, timeout=30)
    assert ingested.json()["created"] == 20, ingested.text
    outcomes = [httpx.post(f"{url}/api/replenish", headers=auth, timeout=60).json()["outcome"] for _ in range(4)]
    assert outcomes == ["published", "published", "published", "skipped"]
    page = httpx.get(f"{url}/api/tasks", params={"status": "PROCESSING", "limit": 100}, headers=auth, timeout=10)
    running = [task["record_id"] for task in page.json()["items"]]
    assert len(running) == 12, page.text
    failed = [{"record_id": record_id, "error": error} for record_id, error in zip(running, errors, strict=False)]
    reports = {"FAILED": failed, "SUCCESS": running[3:7]}
    answer = httpx.post(f"{url}/api/tasks/update-status", json=reports, headers=auth, timeout=30)
    assert answer.json()["updated"] == {"FAILED": 3, "SUCCESS": 4}, answer.text


def stats_of(url: str) -> dict:
    return httpx.get(f"{url}/api/stats", headers={"X-API-Key": KEY}, timeout=10).json()


def wait_for(driver, condition, what: str, timeout: float = 20):
    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {timeout}s") from None


def css(driver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def tiles(driver) -> dict[str, int]:
    found = driver.find_elements(By.CSS_SELECTOR, "#counts [data-status]")
    return {tile.get_attribute("data-status"): int(tile.get_attribute("data-count")) for tile in found}


def fresh(driver) -> bool:
    return css(driver, "#updated").get_attribute("data-state") == "fresh"


def sign_in(driver, key: str) -> None:
    field = css(driver, "#api-key")
    field.clear()
    field.send_keys(key)
    css(driver, "#sign-in").click()


def attribute(value: object) -> str:
    """A figure as the page writes it into a data-* attribute: an unknown (null) one as empty."""
    return "" if value is None else str(value)


def assert_the_figures_are_the_apis(driver, stats: dict) -> None:
    assert tiles(driver) == stats["counts"]
    assert css(driver, "#queue-depth").get_attribute("data-value") == str(stats["queue_depth"])
    assert css(driver, "#queue-threshold").get_attribute("data-value") == str(stats["replenish_threshold"])
    rows = driver.find_elements(By.CSS_SELECTOR, "#cycles tbody tr")
    assert [row.get_attribute("data-started-at") for row in rows] == [c["started_at"] for c in stats["recent_cycles"]]
    for row, cycle in zip(rows, stats["recent_cycles"], strict=True):
        cell = {td.get_attribute("data-field"): td for td in row.find_elements(By.TAG_NAME, "td")}
        assert cell["depth"].get_attribute("data-before") == attribute(cycle["depth_before"])
        assert cell["depth"].get_attribute("data-after") == attribute(cycle["depth_after"])
        assert cell["published"].get_attribute("data-value") == str(cycle["published"])
        assert cell["failed"].get_attribute("data-value") == str(cycle["failed"])
        assert cell["outcome"].text.split("\n")[0] == cycle["outcome"]
    assert css(driver, "#depth-chart").get_attribute("data-points") == str(len(stats["recent_cycles"]))
    items = driver.find_elements(By.CSS_SELECTOR, "#failures > li")
    shown = [item.get_attribute("data-record-id") for item in items]
    assert shown == [failure["record_id"] for failure in stats["recent_failures"]]
    for item, failure in zip(items, stats["recent_failures"], strict=True):
        # textContent: a long error sits collapsed in <details>, where .text would read ""
        assert item.find_element(By.CSS_SELECTOR, "[data-field=error]").get_attribute("textContent") == failure["error"]


def screenshot(driver, name: str, width: int, height: int, mobile: bool = False) -> None:
    """The whole page at this width: the viewport stretched to the page's height for the shot, then put back."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": max(height, full)})
    driver.save_screenshot(str(artifacts_dir() / name))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def test_the_status_page_in_a_real_browser(browser, tmp_path):
    driver = browser
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "API_KEYS": KEY,
        "SCHEDULER_ENABLED": "false",
        "REPLENISH_THRESHOLD": "10",
        "REPLENISH_BATCH_SIZE": "4",
    }
    with running_service(env, tmp_path) as (url, _):
        seed(url)
        stats = stats_of(url)
        assert stats["counts"]["FAILED"] == 3 and len(stats["recent_cycles"]) == 4
        assert sorted(f["error"] for f in stats["recent_failures"]) == sorted(ERRORS)

        driver.get(f"{url}/")
        wait_for(driver, lambda d: css(d, "#login").is_displayed(), "the sign-in form")
        sign_in(driver, "not-the-key")
        wait_for(driver, lambda d: css(d, "#login-error").text == "the API key is not valid", "the API's refusal")
        sign_in(driver, KEY)
        wait_for(driver, fresh, "the figures")
        assert css(driver, "#figures").is_displayed() and not css(driver, "#login").is_displayed()
        assert_the_figures_are_the_apis(driver, stats)
        assert driver.find_elements(By.CSS_SELECTOR, "#failures img, #failures script") == []
        assert driver.execute_script("return window.__xss") is None
        assert css(driver, "#backlog-none").is_displayed() and css(driver, "#feishu-none").is_displayed()  # SQLite
        screenshot(driver, "status-page-desktop.png", 1280, 900)
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        css(driver, "#retry-failed").click()
        question = wait_for(driver, lambda d: css(d, "#action-question"), "the dry run")
        wait_for(driver, lambda d: question.is_displayed() and question.get_attribute("data-matched"), "the dry run")
        assert question.get_attribute("data-matched") == "3" and "3 FAILED" in question.text
        assert stats_of(url)["counts"]["FAILED"] == 3  # the dry run changed nothing
        css(driver, "#action-yes").click()
        wait_for(driver, lambda d: css(d, "#action-result").get_attribute("data-changed") == "3", "the retry's result")
        wait_for(driver, lambda d: tiles(d).get("FAILED") == 0, "FAILED at 0 after the refresh")
        after = stats_of(url)
        assert after["counts"]["FAILED"] == 0 and tiles(driver) == after["counts"]
        assert tiles(driver)["PENDING"] == stats["counts"]["PENDING"] + 3

        # a phone: 390 CSS pixels wide, the viewport meta honoured
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.refresh()  # the key is in this tab's sessionStorage: no sign-in again
        wait_for(driver, fresh, "the figures on a phone")
        overflow = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], f"the page is wider than the phone: {overflow}"
        columns = driver.execute_script("return getComputedStyle(document.querySelector('main')).gridTemplateColumns")
        assert len(columns.split()) == 1, columns
        screenshot(driver, "status-page-phone.png", 390, 844, mobile=True)
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        # the two refusals the test asked for (no key, a wrong key) are logged by Chromium itself
        unexpected = [e["message"] for e in errors if not ("/api/stats" in e["message"] and "401" in e["message"])]
        assert unexpected == [] and len(errors) == 2, errors

        css(driver, "#sign-out").click()
        wait_for(driver, lambda d: css(d, "#login").is_displayed(), "the sign-in form after signing out")
        assert driver.execute_script("return sessionStorage.length") == 0
        sign_in(driver, KEY)
        wait_for(driver, fresh, "the figures after signing in again")

    # the service is gone: the next refresh fails, the banner says so, and the last figures stay
    driver.execute_script("document.dispatchEvent(new Event('visibilitychange'))")
    wait_for(driver, lambda d: css(d, "#banner").is_displayed(), "the stale banner")
    assert css(driver, "#updated").get_attribute("data-state") == "stale"
    assert "Could not refresh" in css(driver, "#banner").text and tiles(driver) == after["counts"]


def test_the_outbox_and_the_feishu_calls_on_bitable(browser, tmp_path, feishu):
    """The panels SQLite has no figures for, against the Feishu emulator; its screenshot is the README's."""
    driver = browser
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "API_KEYS": KEY,  # the timer is on, every 4 hours: it shows the next cycle, and none runs meanwhile
        "REPLENISH_THRESHOLD": "10",
        "REPLENISH_BATCH_SIZE": "4",
        "STATS_CACHE_SECONDS": "600",  # the page and the test read one cached count: no Feishu call between
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": feishu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": feishu.url,
    }
    with running_service(env, tmp_path) as (url, _):
        seed(url, WORKER_ERRORS)
        auth = {"X-API-Key": KEY}

        def reports_written() -> bool:  # read as a list, which caches no count
            page = httpx.get(f"{url}/api/tasks", params={"status": "FAILED"}, headers=auth, timeout=10).json()
            return len(page["items"]) == 3

        wait_until(reports_written, 30, "the outbox to write the reports to the table")
        stats = stats_of(url)
        assert stats["backlog"] is not None and stats["feishu"]["calls"] and stats["next_replenish"], stats

        driver.get(f"{url}/ui")
        sign_in(driver, KEY)
        wait_for(driver, fresh, "the figures")
        stats = stats_of(url)  # read after the page's own: the same cached counts, the same calls
        assert_the_figures_are_the_apis(driver, stats)
        assert css(driver, "#backlog").is_displayed() and not css(driver, "#backlog-none").is_displayed()
        assert css(driver, "#backlog-depth").get_attribute("data-value") == str(stats["backlog"]["depth"])
        rows = driver.find_elements(By.CSS_SELECTOR, "#feishu tbody tr")
        shown = {
            row.get_attribute("data-endpoint"): (
                int(row.find_element(By.CSS_SELECTOR, "[data-field=calls]").text.replace(",", "")),
                int(row.find_element(By.CSS_SELECTOR, "[data-field=rate-limited]").text.replace(",", "")),
            )
            for row in rows
        }
        calls, limited = stats["feishu"]["calls"], stats["feishu"]["rate_limited"]
        assert shown == {name: (calls.get(name, 0), limited.get(name, 0)) for name in {*calls, *limited}}
        screenshot(driver, "status-page-bitable.png", 1280, 900)
