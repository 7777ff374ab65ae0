"""`make test-live`'s own machinery, run as it runs against a real Bitable but pointed at the emulator over HTTP:
the live suite's session (credentials, columns, the empty-table guard) and its clean-up of every row it made."""

import os
import subprocess
import sys

import pytest

from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.modes import LIVE
from tests.support.processes import ROOT

pytestmark = pytest.mark.skipif(LIVE, reason="runs the live suite itself: not inside it")


def run_live_suite(feishu, *args: str, bot: bool = True) -> subprocess.CompletedProcess:
    env = {
        "TEST_LIVE": "1",
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": feishu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": feishu.url,
    }
    if bot:
        feishu.add_bot("hook-live", "live-secret")
        env |= {"FEISHU_ROBOT_WEBHOOK_URL": f"{feishu.url}/open-apis/bot/v2/hook/hook-live"}
        env |= {"FEISHU_ROBOT_SECRET": "live-secret"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/live", "-q", "-rs", "-p", "no:cacheprovider", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_live_suite_passes_on_a_table_over_http_and_leaves_it_empty(feishu):
    result = run_live_suite(feishu)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
    assert feishu.rows(APP_TOKEN, TABLE_ID) == {}
    assert feishu.bot_messages("hook-live") == []


def test_the_live_suite_refuses_a_table_that_holds_rows(feishu):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": "0" * 64, "Status": "SUCCESS"}])
    result = run_live_suite(feishu, "-k", "doctor_passes", bot=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "has 1 rows: the live suite needs an empty table" in result.stdout
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1
