"""Probes and counts paid per window, on the emulator through the real SDK, with a clock the test moves by hand."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from app.errors import StoreUnavailable
from app.models import Backlog, StatusChange, TaskStatus
from app.store.bitable import BitableTaskStore
from app.store.columns import load_schema
from app.store.windows import IDLE_FACTOR, SCAN_ROWS, PoolCounts
from tests.support.fakes import Seconds
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.stores import open_store
from tests.support.tasks import add_all, new_task

WINDOW = 30.0


@pytest.fixture
def seconds() -> Seconds:
    return Seconds()


@pytest.fixture
async def new_store(feishu, tmp_path, seconds) -> AsyncIterator[Callable]:
    """Stores on the emulator's table, on the test's clock, one try a call; all closed at the end."""
    stores: list[BitableTaskStore] = []

    async def make(**overrides) -> BitableTaskStore:
        windows = {"ready_check_seconds": WINDOW, "stats_cache_seconds": WINDOW} | overrides
        store = await open_store(
            feishu, tmp_path / f"data-{len(stores)}", clock=seconds, feishu_retry_attempts=1, **windows
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def calls(feishu) -> int:
    return sum(1 for call in feishu.calls if call.endpoint != "token")


async def tasks_in(store: BitableTaskStore, statuses: list[TaskStatus]) -> list[str]:
    stored = await add_all(store, [new_task(n) for n in range(len(statuses))])
    record_ids = [s.record_id for s in stored]
    changes = [StatusChange(rid, status) for rid, status in zip(record_ids, statuses, strict=True)]
    await store.update([c for c in changes if c.status is not TaskStatus.PENDING])
    return record_ids


def expected(**counts: int) -> dict[str, int]:
    return {status.value: counts.get(status.value, 0) for status in TaskStatus}


# ---- readiness ----------------------------------------------------------------------------------------------


async def test_probes_within_a_window_answer_from_the_latest_real_call_and_one_call_renews_it(
    new_store, feishu, seconds
):
    store = await new_store()  # its own column list at start is the first evidence
    feishu.reset_calls()
    for _ in range(100):
        await store.check()
    seconds.advance(WINDOW - 0.1)
    await asyncio.gather(*(store.check() for _ in range(20)))
    assert feishu.count("fields_list") == 0
    seconds.advance(0.1)  # the window is over: one call, whoever asks
    await asyncio.gather(*(store.check() for _ in range(20)))
    assert feishu.count("fields_list") == 1
    seconds.advance(WINDOW - 0.1)
    await store.check()
    assert calls(feishu) == 1


async def test_any_real_call_renews_the_window(new_store, feishu, seconds):
    store = await new_store()
    seconds.advance(WINDOW - 1)
    await store.pending(10)  # a search the store made for its own reasons
    feishu.reset_calls()
    seconds.advance(WINDOW - 1)
    await store.check()
    assert calls(feishu) == 0


async def test_a_failed_real_call_makes_the_probe_fail_without_a_call_until_the_window_ends(new_store, feishu, seconds):
    store = await new_store()
    feishu.add_fault("server_error", endpoint="search")
    with pytest.raises(StoreUnavailable) as failed:
        await store.pending(10)
    feishu.reset_calls()
    feishu.clear_faults()
    for _ in range(10):
        with pytest.raises(StoreUnavailable) as probed:
            await store.check()
        assert probed.value.detail == failed.value.detail
    seconds.advance(WINDOW - 0.1)
    with pytest.raises(StoreUnavailable):
        await store.check()
    assert calls(feishu) == 0
    seconds.advance(0.1)  # past the window: one call, and it answers
    await store.check()
    await store.check()
    assert calls(feishu) == feishu.count("fields_list") == 1


async def test_a_success_after_a_failure_makes_the_store_ready_again_without_a_call(new_store, feishu):
    store = await new_store()
    feishu.add_fault("server_error", endpoint="search", times=1)
    with pytest.raises(StoreUnavailable):
        await store.pending(10)
    await store.pending(10)
    feishu.reset_calls()
    await store.check()
    assert calls(feishu) == 0


async def test_concurrent_probes_share_one_call_and_one_that_gives_up_leaves_it_to_the_others(
    new_store, feishu, seconds
):
    store = await new_store()
    seconds.advance(WINDOW)
    feishu.latency = {"fields_list": 0.3}
    feishu.reset_calls()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.check(), 0.05)  # as /readyz gives up on a slow store
    await asyncio.gather(*(store.check() for _ in range(30)))
    assert feishu.count("fields_list") == 1


async def test_a_failed_probe_call_answers_the_probes_of_its_window(new_store, feishu, seconds):
    store = await new_store()
    seconds.advance(WINDOW)
    feishu.add_fault("server_error", endpoint="fields_list")
    feishu.reset_calls()
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            await store.check()
    assert feishu.count("fields_list") == 1


async def test_a_window_of_zero_calls_on_every_probe(new_store, feishu):
    store = await new_store(ready_check_seconds=0)
    feishu.reset_calls()
    for _ in range(3):
        await store.check()
    assert feishu.count("fields_list") == 3


# ---- counts -------------------------------------------------------------------------------------------------


async def test_a_small_pool_is_counted_in_one_search_and_kept_for_the_window(new_store, feishu, seconds):
    store = await new_store()
    statuses = [TaskStatus.PENDING] * 3 + [TaskStatus.SUCCESS] * 2 + [TaskStatus.FAILED, TaskStatus.CANCELLED]
    await tasks_in(store, statuses)
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Status": "PROCESSING"}, {"Identifier": "typed by hand, no status"}])
    feishu.reset_calls()
    first = await store.counts()
    assert first.by_status == expected(PENDING=3, PROCESSING=1, SUCCESS=2, FAILED=1, CANCELLED=1)
    assert feishu.count("search") == calls(feishu) == 1
    seconds.advance(WINDOW - 0.1)
    assert await store.counts() == first
    assert calls(feishu) == 1


async def test_a_pool_past_the_scan_is_counted_by_five_searches(new_store, feishu, seconds):
    store = await new_store()
    statuses = ["PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED"]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Status": statuses[n % 5]} for n in range(SCAN_ROWS + 5)])
    feishu.reset_calls()
    counts = await store.counts()
    assert counts.by_status == {status: SCAN_ROWS // 5 + 1 for status in statuses}
    assert feishu.count("search") == 1 + 5  # the first page of the scan showed the size
    seconds.advance(WINDOW * IDLE_FACTOR)
    feishu.reset_calls()
    assert (await store.counts()).by_status == counts.by_status
    assert feishu.count("search") == 5  # the size is known now


async def test_rows_without_a_status_keep_a_pool_past_the_scan_from_being_scanned_again(new_store, feishu, seconds):
    store = await new_store()
    statuses = ["PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED"]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Status": statuses[n % 5]} for n in range(1_500)])
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": f"typed by hand {n}"} for n in range(600)])
    feishu.reset_calls()
    counts = await store.counts()
    assert counts.by_status == {status: 300 for status in statuses}
    assert feishu.count("search") == 1 + 5  # the scan's first page showed 2,100 rows
    for _ in range(2):
        seconds.advance(WINDOW * IDLE_FACTOR)
        feishu.reset_calls()
        assert (await store.counts()).by_status == counts.by_status
        assert feishu.count("search") == 5  # 1,500 with a status, but 2,100 rows: no scan to give up again


async def test_callers_of_due_counts_share_one_count(new_store, feishu, seconds):
    store = await new_store()
    await tasks_in(store, [TaskStatus.PENDING] * 4)
    await store.counts()
    await store.update([])  # nothing written: an empty update makes no call
    seconds.advance(WINDOW * IDLE_FACTOR)
    feishu.latency = {"search": 0.2}
    feishu.reset_calls()
    answers = await asyncio.gather(*(store.counts() for _ in range(25)))
    assert feishu.count("search") == 1
    assert len({answer.as_of for answer in answers}) == 1


async def test_a_write_of_this_process_shows_in_the_counts_within_the_window(new_store, feishu, seconds):
    store = await new_store()
    record_ids = await tasks_in(store, [TaskStatus.PENDING] * 3)
    before = await store.counts()
    seconds.advance(1)
    await store.update([StatusChange(record_ids[0], TaskStatus.SUCCESS)])
    feishu.reset_calls()
    seconds.advance(WINDOW - 1.1)
    assert await store.counts() == before  # younger than the window: served as counted, and says when
    assert calls(feishu) == 0
    seconds.advance(0.1)  # the window since counting is over, and this process wrote since: counted again
    after = await store.counts()
    assert after.by_status == expected(PENDING=2, SUCCESS=1)
    assert after.as_of > before.as_of and calls(feishu) == 1


async def test_with_no_write_of_this_process_counts_are_kept_ten_windows_which_bounds_a_hand_edit(
    new_store, feishu, seconds
):
    store = await new_store()
    await tasks_in(store, [TaskStatus.PENDING] * 2)
    seconds.advance(1)  # the count begins after the last write ended
    before = await store.counts()
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Status": "PENDING"}])  # by hand: this process cannot know
    feishu.reset_calls()
    seconds.advance(WINDOW * IDLE_FACTOR - 0.1)
    assert await store.counts() == before
    assert calls(feishu) == 0
    seconds.advance(0.1)
    assert (await store.counts()).by_status == expected(PENDING=3)
    assert calls(feishu) == 1


async def test_a_count_that_fails_is_raised_and_the_old_counts_are_not_served(new_store, feishu, seconds):
    store = await new_store()
    record_ids = await tasks_in(store, [TaskStatus.PENDING] * 2)
    await store.counts()
    await store.update([StatusChange(record_ids[0], TaskStatus.FAILED)])
    seconds.advance(WINDOW)
    feishu.add_fault("server_error", endpoint="search", times=1)
    with pytest.raises(StoreUnavailable):
        await store.counts()
    assert (await store.counts()).by_status == expected(PENDING=1, FAILED=1)


async def test_reports_waiting_are_counted_through_the_page_and_never_kept_past_the_window(new_store, feishu, seconds):
    store = await new_store()
    await tasks_in(store, [TaskStatus.PENDING] * 2)
    waiting = Backlog(depth=1, oldest_age_seconds=0.5)
    schema = await load_schema(store.table)
    counts = PoolCounts(store.table, store.page, store.newest_failed, lambda: waiting, lambda: schema, WINDOW)
    feishu.reset_calls()
    assert (await counts.get()).by_status == expected(PENDING=2)
    assert feishu.count("search") == 5  # one page() a status: the store writes waiting reports before it reads
    seconds.advance(WINDOW)
    await counts.get()
    assert feishu.count("search") == 10


async def test_a_window_of_zero_counts_on_every_read(new_store, feishu):
    store = await new_store(stats_cache_seconds=0)
    feishu.reset_calls()
    await store.counts()
    await store.counts()
    assert feishu.count("search") == 2


# ---- the budget ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tasks", "spent"), [(1_000, 3), (SCAN_ROWS, 5), (SCAN_ROWS + 1, 7)])
async def test_a_busy_minute_of_probes_and_stats_costs_its_counts_and_one_column_list(
    new_store, feishu, seconds, tasks, spent
):
    """The issue's minute, 120 probes (one every 0.5 s) and 40 stats reads (one every 1.5 s) right after the pool's
    last write: one count (a search per 500 rows up to SCAN_ROWS; past it, the scan's first page and five counts),
    whose calls answer the probes of the first window, and one column list for the second. At most five calls up
    to SCAN_ROWS rows."""
    store = await new_store()
    record_ids = [s.record_id for s in await add_all(store, [new_task(n) for n in range(tasks)])]
    await store.update([StatusChange(rid, TaskStatus.SUCCESS) for rid in record_ids])
    seconds.advance(1)
    feishu.reset_calls()
    for step in range(120):
        await store.check()
        if step % 3 == 0:
            assert (await store.counts()).by_status == expected(SUCCESS=tasks)
        seconds.advance(0.5)
    assert calls(feishu) == spent
    assert feishu.count("fields_list") == 1


async def test_the_newest_failures_come_with_either_count_at_no_extra_call(new_store, feishu):
    store = await new_store(stats_cache_seconds=0)
    record_ids = await tasks_in(store, [TaskStatus.PENDING] * 12)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    failures = [
        StatusChange(rid, TaskStatus.FAILED, error=f"boom {n}", finished_at=start + timedelta(minutes=n))
        for n, rid in enumerate(record_ids[:11])
    ]
    await store.update(failures)
    newest = [f"boom {n}" for n in range(10, 0, -1)]
    feishu.reset_calls()
    scanned = await store.counts()
    assert feishu.count("search") == 1  # a small pool: one read of its columns
    assert [r.error for r in scanned.recent_failures] == newest
    assert scanned.recent_failures[0].finished_at == start + timedelta(minutes=10)
    waiting = Backlog(depth=1, oldest_age_seconds=0.5)  # the count by status, as for a pool past SCAN_ROWS
    schema = await load_schema(store.table)
    counts = PoolCounts(store.table, store.page, store.newest_failed, lambda: waiting, lambda: schema, 0)
    feishu.reset_calls()
    counted = await counts.get()
    assert feishu.count("search") == 5
    assert counted.by_status == scanned.by_status == expected(PENDING=1, FAILED=11)
    assert counted.recent_failures == scanned.recent_failures


async def test_a_small_pool_orders_failures_without_a_finish_time_as_sqlite_does(new_store, feishu):
    """Finished ones first, newest first; then those failed by hand or by lease recovery, newest created first."""
    created = 1_700_000_000_000
    rows = [
        {"Identifier": f"{n:064x}", "Status": "FAILED", "CreatedAt": created + n * 60_000, "Error": f"e{n}"}
        for n in range(3)
    ]
    rows[0]["FinishedAt"] = created + 3_600_000
    feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    store = await new_store(stats_cache_seconds=0)
    feishu.reset_calls()
    counted = await store.counts()
    assert feishu.count("search") == 1  # the column read
    assert [r.error for r in counted.recent_failures] == ["e0", "e2", "e1"]
