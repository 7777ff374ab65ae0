"""The Bitable store's reports through the outbox and its flusher, on the emulator: answered at once, written in
few batches, in the order accepted, through outages, missing rows, refusals and restarts."""

import asyncio
import json
import logging
import statistics
import time
from datetime import UTC, datetime

import pytest

from app.errors import StoreUnavailable
from app.models import StatusChange, TaskStatus
from app.paths import DataDir
from app.store.bitable import BitableTaskStore
from app.store.columns import Schema
from app.store.outbox import Outbox
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.stores import open_store
from tests.support.tasks import add_all, new_task
from tests.support.waits import eventually

LONG = 3_600  # a flush window no test outlasts: only a read, an update or a close writes


async def claimed(store: BitableTaskStore, count: int, start: int = 0) -> list[str]:
    """New tasks, claimed as a cycle claims them: in workers' hands, so known to the store."""
    stored = await add_all(store, [new_task(n) for n in range(start, start + count)])
    ids = [s.record_id for s in stored]
    await store.update([StatusChange(i, TaskStatus.PROCESSING, claimed_at=datetime.now(UTC), attempts=1) for i in ids])
    return ids


def report(status: TaskStatus, *record_ids: str) -> list[StatusChange]:
    return [StatusChange(record_id, status) for record_id in record_ids]


def statuses(emu, ids) -> list[str]:
    rows = emu.rows(APP_TOKEN, TABLE_ID)
    return [rows[i]["Status"] for i in ids]


def outbox_of(data_dir) -> Outbox:
    return Outbox(DataDir(data_dir).outbox_db(TABLE_ID))


async def test_a_report_is_answered_before_it_is_written_and_written_within_the_window(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=0.3)
    ids = await claimed(store, 3)
    feishu.latency = {"batch_update": 0.2}  # a write the answer must not wait for
    feishu.reset_calls()
    assert await store.report(report(TaskStatus.SUCCESS, *ids[:2])) == []
    assert statuses(feishu, ids) == ["PROCESSING"] * 3  # answered: durable in the outbox, not yet in the table
    assert store.backlog().depth == 2
    await eventually(lambda: store.backlog().depth == 0, 5, "the flush")  # confirmed: the call is in the log
    assert statuses(feishu, ids) == ["SUCCESS", "SUCCESS", "PROCESSING"]
    assert (feishu.count("batch_update"), feishu.count("batch_get")) == (1, 0)
    await store.close()


async def test_a_thousand_single_reports_from_twenty_workers_cost_a_handful_of_writes(feishu, tmp_path):
    store = await open_store(feishu, tmp_path)  # the default window: 2 s
    ids = await claimed(store, 1_000)
    feishu.latency = 0.05  # the target's emulator: 50 ms a call
    feishu.reset_calls()
    answers: list[float] = []

    async def worker(mine: list[str]) -> None:
        for record_id in mine:
            started = time.perf_counter()
            assert await store.report(report(TaskStatus.SUCCESS, record_id)) == []
            answers.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(ids[w::20]) for w in range(20)))
    await eventually(lambda: store.backlog().depth == 0, 10, "every report written")
    assert set(statuses(feishu, ids)) == {"SUCCESS"}
    updates = [c.n_records for c in feishu.calls if c.endpoint == "batch_update"]
    p99 = statistics.quantiles(answers, n=100)[98]
    print(f"\n1,000 single reports, 20 workers: batch_update rows {updates}, p99 answer {p99 * 1000:.1f} ms")
    assert sum(updates) == 1_000 and len(updates) <= 3
    assert feishu.count("batch_get") == 0  # claimed here: known without a call
    await store.close()


async def test_changes_to_one_record_apply_in_the_order_accepted_within_and_across_flushes(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    a, b = await claimed(store, 2)
    feishu.reset_calls()
    await store.report(report(TaskStatus.SUCCESS, a, b))
    await store.report(report(TaskStatus.FAILED, a))
    await store.report(report(TaskStatus.PENDING, b))
    await store.report(report(TaskStatus.CANCELLED, b))
    await store.pending(10)  # a read flushes: one write, each record as it was last reported
    assert [c.n_records for c in feishu.calls if c.endpoint == "batch_update"] == [2]
    assert statuses(feishu, [a, b]) == ["FAILED", "CANCELLED"]
    await store.report(report(TaskStatus.SUCCESS, a))
    await store.pending(10)
    await store.report(report(TaskStatus.PENDING, a))
    await store.pending(10)
    assert statuses(feishu, [a, b]) == ["PENDING", "CANCELLED"]
    assert feishu.count("batch_update") == 3
    await store.close()


async def test_reports_are_accepted_through_an_outage_and_written_once_feishu_is_back(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=0, feishu_retry_attempts=2)
    ids = await claimed(store, 30)
    feishu.reset_calls()
    feishu.add_fault("server_error", endpoint="batch_update")
    hours = 0.0
    feishu.clock = lambda: time.monotonic() + hours * 3600
    for round_ in range(3):  # each round meets the flusher backing off after another failed write
        failed = feishu.count("batch_update")
        for record_id in ids[round_ * 10 : round_ * 10 + 10]:
            started = time.perf_counter()
            assert await store.report(report(TaskStatus.SUCCESS, record_id)) == []
            assert time.perf_counter() - started < 1  # durable and answered, with every write failing
        await eventually(lambda n=failed: feishu.count("batch_update") > n + 1, 30, "a whole failed flush after these")
        hours += 1  # the outage lasts hours of the emulator's time: the tenant token expires meanwhile
    backlog = store.backlog()
    assert backlog.depth == 30 and backlog.oldest_age_seconds > 0
    assert feishu.count("batch_update", code=0) == 0
    assert set(statuses(feishu, ids)) == {"PROCESSING"}
    feishu.clear_faults()
    await eventually(lambda: store.backlog().depth == 0, 60, "the backlog written after the outage")
    assert set(statuses(feishu, ids)) == {"SUCCESS"}
    assert feishu.count("batch_update", code=0) == 1  # all 30 in one write
    assert feishu.count("batch_update", code=99991663) == 1  # the expired token, fetched again
    await store.close()


async def test_a_read_during_an_outage_fails_rather_than_answer_without_the_reports(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG, feishu_retry_attempts=1)
    (record_id,) = await claimed(store, 1)
    await store.report(report(TaskStatus.SUCCESS, record_id))
    feishu.add_fault("server_error", endpoint="batch_update")
    with pytest.raises(StoreUnavailable, match="batch_update"):
        await store.pending(10)
    assert (await store.get([record_id]))[record_id].status is TaskStatus.SUCCESS  # laid over, no write needed
    feishu.clear_faults()
    assert await store.pending(10) == []
    await store.close()


async def test_reports_for_rows_gone_from_the_table_are_dropped_and_the_rest_written(feishu, tmp_path, caplog):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 3)
    await store.report(report(TaskStatus.SUCCESS, *ids))
    await store.table.batch_delete([ids[1]])  # deleted by hand while the reports wait
    feishu.reset_calls()
    with caplog.at_level(logging.WARNING, logger="app.store.flusher"):
        await store.pending(10)
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert [rows[i]["Status"] for i in (ids[0], ids[2])] == ["SUCCESS", "SUCCESS"]
    assert (feishu.count("batch_update"), feishu.count("batch_update", code=1254043), feishu.count("batch_get")) == (
        2,
        1,
        1,
    )
    assert any("dropped 1 status reports" in r.getMessage() and ids[1] in r.getMessage() for r in caplog.records)
    assert store.backlog().depth == 0
    assert await store.report(report(TaskStatus.FAILED, ids[1])) == [ids[1]]  # forgotten: looked up, not found
    await store.close()


async def test_a_batch_refused_for_its_cells_is_written_again_in_halves_with_their_cells(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 2)
    await store.report([StatusChange(i, TaskStatus.FAILED, error=f"boom {n}") for n, i in enumerate(ids)])
    feishu.add_fault("1254130", endpoint="batch_update", times=1)  # TooLargeCell: the rows' content was refused
    feishu.reset_calls()
    await store.pending(10)
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert [(rows[i]["Status"], rows[i]["Error"]) for i in ids] == [("FAILED", "boom 0"), ("FAILED", "boom 1")]
    assert [c.n_records for c in feishu.calls if c.endpoint == "batch_update"] == [2, 1, 1]
    assert store.backlog().depth == 0
    await store.close()


async def test_one_refused_row_among_a_thousand_costs_the_others_nothing_but_a_few_calls(feishu, tmp_path, caplog):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 1_000)
    bad = ids[617]
    await store.report(
        [
            StatusChange(i, TaskStatus.SUCCESS, result={"blob": "x" * 100_001} if i == bad else {"n": n})
            for n, i in enumerate(ids)
        ]
    )
    feishu.reset_calls()
    with caplog.at_level(logging.ERROR, logger="app.store.flusher"):
        await store.pending(10)
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert all(json.loads(rows[i]["Result"]) == {"n": n} for n, i in enumerate(ids) if i != bad)
    assert rows[bad]["Status"] == "SUCCESS" and "Result" not in rows[bad]  # alone, as a bare status
    print(f"\none refused row among 1,000: {feishu.count('batch_update')} batch_update calls")
    assert feishu.count("batch_update") <= 1 + 20 + 1  # the batch, its halvings, the bare status
    bare = [r.getMessage() for r in caplog.records if "bare statuses" in r.getMessage()]
    assert len(bare) == 1 and "refused the cells of 1 status reports" in bare[0], bare
    assert store.backlog().depth == 0
    await store.close()


async def test_a_batch_refused_row_by_row_spends_a_bounded_number_of_calls(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 1_000)
    await store.report(report(TaskStatus.FAILED, *ids))
    feishu.add_fault("1254130", endpoint="batch_update")  # every write refused, bare statuses too
    feishu.reset_calls()
    await store.pending(10)
    print(f"\n1,000 rows all refused: {feishu.count('batch_update')} batch_update calls")
    assert feishu.count("batch_update") <= 1 + 20 + 11  # the batch, its halvings, each last part once bare
    assert store.backlog().depth == 0
    feishu.clear_faults()
    await store.close()
    outbox = outbox_of(tmp_path)
    outbox.open()
    assert len(outbox.refused()) == 1_000
    await outbox.close()


async def test_a_result_too_large_for_its_cell_still_lets_the_status_through(feishu, tmp_path, caplog):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    (record_id,) = await claimed(store, 1)
    # the service refuses such a result (422); a store given one must still not lose the status
    await store.report([StatusChange(record_id, TaskStatus.SUCCESS, result={"blob": "x" * 100_001})])
    with caplog.at_level(logging.ERROR, logger="app.store.flusher"):
        await store.pending(10)
    row = feishu.rows(APP_TOKEN, TABLE_ID)[record_id]
    assert row["Status"] == "SUCCESS" and "Result" not in row
    assert feishu.count("batch_update", code=1254130) == 1  # Feishu's own refusal, then the bare status
    assert any("writing bare statuses" in r.getMessage() for r in caplog.records)
    await store.close()


async def test_reports_refused_even_as_bare_statuses_are_moved_aside_and_the_outbox_goes_on(feishu, tmp_path, caplog):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 3)
    await store.report(report(TaskStatus.FAILED, *ids[:2]))
    feishu.add_fault("1254130", endpoint="batch_update", times=5)  # the batch, then each half, also bare
    with caplog.at_level(logging.ERROR, logger="app.store.flusher"):
        await store.pending(10)
    assert any("refused 2 status reports even as bare statuses" in r.getMessage() for r in caplog.records)
    assert (store.backlog().depth, store.backlog().refused) == (0, 2)  # not wedged: the next report is written
    await store.report(report(TaskStatus.SUCCESS, ids[2]))
    await store.pending(10)
    assert statuses(feishu, ids) == ["PROCESSING", "PROCESSING", "SUCCESS"]
    await store.close()
    outbox = outbox_of(tmp_path)
    outbox.open()
    refused = outbox.refused()
    await outbox.close()
    assert sorted(r.change.record_id for r in refused) == sorted(ids[:2])
    assert all("1254130" in r.reason for r in refused)


async def test_reports_left_by_a_close_that_could_not_write_are_written_at_the_next_open(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG, feishu_retry_attempts=1)
    ids = await claimed(store, 4)
    await store.report(report(TaskStatus.SUCCESS, *ids))
    feishu.add_fault("server_error", endpoint="batch_update")
    await store.close()  # its last flush fails: the reports stay in the outbox
    assert set(statuses(feishu, ids)) == {"PROCESSING"}
    feishu.clear_faults()
    feishu.reset_calls()
    store = await open_store(feishu, tmp_path, status_flush_seconds=0.2)  # no read: the flusher writes them
    await eventually(lambda: store.backlog().depth == 0, 10, "the reports written after the restart")
    assert set(statuses(feishu, ids)) == {"SUCCESS"}
    assert feishu.count("batch_update") == 1
    await store.close()


async def test_a_close_writes_what_waits(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 2)
    await store.report(report(TaskStatus.SUCCESS, *ids))
    await store.close()
    assert statuses(feishu, ids) == ["SUCCESS", "SUCCESS"]


async def test_a_second_store_on_the_same_data_dir_writes_the_first_ones_reports_before_its_own(feishu, tmp_path):
    first = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(first, 2)
    await first.report(report(TaskStatus.FAILED, *ids))
    second = await open_store(feishu, tmp_path, status_flush_seconds=LONG)  # a CLI command beside the service
    await second.update([StatusChange(ids[0], TaskStatus.PENDING, attempts=0)])  # an operator's retry
    assert statuses(feishu, ids) == ["PENDING", "FAILED"]  # the report first, then the retry over it
    await second.close()
    await first.close()


async def test_a_report_whose_cells_cannot_be_built_is_moved_aside_and_the_rest_written(
    feishu, tmp_path, caplog, monkeypatch
):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    ids = await claimed(store, 3)
    built = Schema.changed_cells

    def changed_cells(schema: Schema, change: StatusChange) -> dict:
        if change.error == "unbuildable":
            raise OverflowError("a bug in building cells")
        return built(schema, change)

    monkeypatch.setattr(Schema, "changed_cells", changed_cells)
    await store.report(
        [StatusChange(ids[0], TaskStatus.FAILED, error="unbuildable"), *report(TaskStatus.SUCCESS, *ids[1:])]
    )
    with caplog.at_level(logging.ERROR, logger="app.store.flusher"):
        await store.pending(10)  # never raises out of the flusher
    assert statuses(feishu, ids) == ["PROCESSING", "SUCCESS", "SUCCESS"]
    assert store.backlog().depth == 0
    assert any("could not build the cells of 1 status reports" in r.getMessage() for r in caplog.records)
    await store.close()
    outbox = outbox_of(tmp_path)
    outbox.open()
    (refused,) = outbox.refused()
    await outbox.close()
    assert refused.change.record_id == ids[0] and "OverflowError" in refused.reason
