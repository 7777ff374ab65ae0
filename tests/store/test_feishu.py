"""The vendor edge on its own: what it imports of the SDK, how it paces calls, and the health its calls showed."""

import asyncio
import subprocess
import sys

import pytest

from app.errors import QuotaExhausted, StoreRejected, StoreUnavailable
from app.store.feishu import CallHealth, FeishuTable, RecordMissing
from tests.support.fakes import Seconds
from tests.support.feishu import APP_TOKEN, TABLE_ID, clear_token_cache
from tests.support.processes import ROOT

SLIM_THEN_FULL = """
import sys
import app.store.feishu
loaded = [name for name in sys.modules if name.startswith("lark_oapi")]
assert "lark_oapi.api.im" not in sys.modules and "lark_oapi.client" not in sys.modules, loaded
assert len(loaded) < 100, len(loaded)
import lark_oapi as lark
client = lark.Client.builder().app_id("a").app_secret("b").build()
assert client.bitable.v1.app_table_record is not None and "lark_oapi.api.im" in sys.modules
"""


def test_the_edge_imports_only_the_sdk_core_and_the_whole_sdk_still_loads_when_used():
    # a fresh interpreter: this one has the whole SDK loaded already by the emulator's tests
    proc = subprocess.run([sys.executable, "-c", SLIM_THEN_FULL], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


async def test_searches_waiting_for_the_rate_limit_start_highest_priority_first(feishu):
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": str(n)} for n in range(10)])
    table = FeishuTable.build(feishu.app_id, feishu.app_secret, APP_TOKEN, TABLE_ID, feishu.url, timeout=5)
    await table.search(page_size=1)  # the token, and the first pacing slot taken
    feishu.reset_calls()
    # the page size tells the searches apart in the emulator's log; all four wait for the next slot together
    await asyncio.gather(*(table.search(page_size=size, priority=size) for size in (2, 5, 3, 4)))
    started = sorted((c.t_start, c.n_records) for c in feishu.calls if c.endpoint == "search")
    assert [size for _, size in started] == [5, 4, 3, 2]
    await table.aclose()


async def test_calls_that_find_no_token_share_one_fetch(feishu):
    table = FeishuTable.build(feishu.app_id, feishu.app_secret, APP_TOKEN, TABLE_ID, feishu.url, timeout=5)
    for _ in range(2):  # at start, and again after the token was forgotten
        clear_token_cache(feishu.app_id)
        feishu.reset_calls()
        await asyncio.gather(*(table.list_fields() for _ in range(5)))
        assert (feishu.count("token"), feishu.count("fields_list")) == (1, 5)
    await table.aclose()


async def test_the_table_keeps_the_outcome_of_its_latest_call(feishu):
    clock = Seconds()
    table = FeishuTable.build(
        feishu.app_id,
        feishu.app_secret,
        APP_TOKEN,
        TABLE_ID,
        feishu.url,
        5,
        attempts=3,
        backoff_base=0.001,
        clock=clock,
    )
    assert table.health() == CallHealth()
    await table.list_fields()
    assert table.health() == CallHealth(last_call_at=clock.now)
    clock.advance(1)
    feishu.add_fault("server_error", endpoint="search", times=3)
    with pytest.raises(StoreUnavailable) as failed:
        await table.search(page_size=1)
    assert table.health() == CallHealth(last_call_at=clock.now, last_error=failed.value)
    clock.advance(1)
    feishu.monthly_quota = 0
    with pytest.raises(QuotaExhausted) as refused:
        await table.list_fields()
    assert table.health() == CallHealth(last_call_at=clock.now, last_error=refused.value)
    feishu.monthly_quota = None
    clock.advance(1)
    with pytest.raises(RecordMissing):  # a refusal of the call's own record ids: the table answered
        await table.batch_update([("recNotThere", {"Status": "SUCCESS"})])
    assert table.health() == CallHealth(last_call_at=clock.now, last_write_at=clock.now)
    clock.advance(1)
    feishu.add_fault("1254002", endpoint="search", times=2)
    with pytest.raises(StoreRejected, match="page_token"):  # the caller's bad token says nothing of the table
        await table.search(page_size=1, page_token="not-ours")
    assert table.health() == CallHealth(last_call_at=clock.now - 1, last_write_at=clock.now - 1)
    await table.aclose()


async def test_the_table_counts_its_calls_per_endpoint_and_those_rate_limited(feishu):
    table = FeishuTable.build(
        feishu.app_id, feishu.app_secret, APP_TOKEN, TABLE_ID, feishu.url, 5, attempts=3, backoff_max=0.01
    )
    assert (table.usage().calls, table.usage().rate_limited) == ({}, {})
    await table.list_fields()
    feishu.add_fault("rate_limit", endpoint="search", times=1)
    feishu.add_fault("server_error", endpoint="search", times=1)
    await table.search(page_size=1)  # a 429, a 5xx, then an answer: three attempts
    usage = table.usage()
    assert (
        usage.calls
        == {"fields_list": 1, "search": 3}
        == {endpoint: feishu.count(endpoint) for endpoint in ("fields_list", "search")}
    )
    assert usage.rate_limited == {"search": 1}
    await table.aclose()
