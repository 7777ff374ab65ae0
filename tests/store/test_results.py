"""Workers' results and errors on Bitable: the Result, Error and FinishedAt cells, result mirrors, and a table
without those columns (the feature off, with one warning)."""

import json
import logging
from datetime import UTC, datetime

from app.identity import canonical_json
from app.models import StatusChange, TaskStatus
from app.store.columns import setup_columns
from app.store.feishu import FeishuTable
from app.store.timestamps import to_ms
from tests.feishu.emulator import DEFAULT_FIELDS
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.stores import open_store
from tests.support.tasks import add_all, new_task

FINISHED = datetime(2026, 11, 1, 12, 31, 5, 123000, tzinfo=UTC)
RESULT_COLUMNS = ("Result", "Error", "FinishedAt")
WITHOUT_RESULTS = [spec for spec in DEFAULT_FIELDS if spec[0] not in RESULT_COLUMNS]  # a table set up before them


async def test_results_and_errors_are_written_to_their_cells_in_one_batch_update(bitable_store, feishu):
    a, b = (s.record_id for s in await add_all(bitable_store, [new_task(1), new_task(2)]))
    result = {"z": [1, 2], "a": {"名": "α"}}
    feishu.reset_calls()
    changes = [
        StatusChange(a, TaskStatus.SUCCESS, result=result, finished_at=FINISHED),
        StatusChange(b, TaskStatus.FAILED, error="KeyError: 'close'", finished_at=FINISHED),
    ]
    assert await bitable_store.update(changes) == []
    assert feishu.count("batch_update") == 1 and feishu.count() == 1
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert rows[a]["Result"] == canonical_json(result) == '{"a":{"名":"α"},"z":[1,2]}'
    assert rows[a]["FinishedAt"] == rows[b]["FinishedAt"] == to_ms(FINISHED)
    assert "Error" not in rows[a] and "Result" not in rows[b]
    assert (rows[b]["Status"], rows[b]["Error"]) == ("FAILED", "KeyError: 'close'")


async def test_result_keys_naming_plain_columns_are_mirrored_there_and_service_columns_are_not(feishu, tmp_path):
    mirrors = [("score", 2), ("region", 3), ("title", 1), ("due", 5)]
    feishu.add_table(APP_TOKEN, "tblMirror", [*DEFAULT_FIELDS, *mirrors])
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblMirror")
    (stored,) = await add_all(store, [new_task(1, region="CHN")])
    result = {"score": 0.75, "region": "USA", "title": 7, "due": "tomorrow", "Status": "DONE", "Attempts": 99}
    await store.update([StatusChange(stored.record_id, TaskStatus.SUCCESS, result=result, finished_at=FINISHED)])
    row = feishu.rows(APP_TOKEN, "tblMirror")[stored.record_id]
    assert {k: row.get(k) for k in ("score", "region", "title", "due")} == {
        "score": 0.75,
        "region": "USA",  # the result's value replaces the payload's
        "title": "7",
        "due": None,  # does not fit a date column: left out, the write goes on
    }
    assert (row["Status"], row.get("Attempts")) == ("SUCCESS", None)
    assert json.loads(row["Result"]) == result  # Result always holds the whole object
    record = (await store.get([stored.record_id]))[stored.record_id]
    assert (record.payload, record.result) == ({"n": 1, "region": "CHN"}, result)
    await store.close()


async def test_without_the_result_columns_reports_still_land_and_one_warning_names_them(feishu, tmp_path, caplog):
    feishu.add_table(APP_TOKEN, "tblOld", [*WITHOUT_RESULTS, ("Result", 2)])  # Result of another type: missing
    caplog.set_level(logging.WARNING)
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblOld")
    warnings = [r.getMessage() for r in caplog.records if "optional columns" in r.getMessage()]
    assert len(warnings) == 1 and "Result, Error, FinishedAt" in warnings[0], warnings
    (stored,) = await add_all(store, [new_task(1)])
    change = StatusChange(stored.record_id, TaskStatus.FAILED, result={"Result": 3}, error="boom", finished_at=FINISHED)
    assert await store.update([change]) == []
    row = feishu.rows(APP_TOKEN, "tblOld")[stored.record_id]
    assert row["Status"] == "FAILED" and not set(RESULT_COLUMNS) & set(row)
    assert feishu.count("batch_update", code=0) == feishu.count("batch_update") == 1
    record = (await store.get([stored.record_id]))[stored.record_id]
    assert (record.status, record.result, record.error, record.finished_at) == (TaskStatus.FAILED, None, None, None)
    await store.close()
    assert len([r for r in caplog.records if "optional columns" in r.getMessage()]) == 1


async def test_cells_typed_by_hand_read_back_as_a_result_only_when_they_hold_a_json_object(feishu, tmp_path):
    rows = [
        {"Status": "SUCCESS", "Result": '{"a": 1}', "Error": "by hand", "FinishedAt": to_ms(FINISHED)},
        {"Status": "SUCCESS", "Result": "[1, 2]"},
        {"Status": "FAILED", "Result": "not json", "Error": ""},
    ]
    good, listed, text = feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    store = await open_store(feishu, tmp_path)
    records = await store.get([good, listed, text])
    assert (records[good].result, records[good].error, records[good].finished_at) == ({"a": 1}, "by hand", FINISHED)
    assert [records[r].result for r in (listed, text)] == [None, None]
    assert records[text].error is None and records[text].finished_at is None
    assert "Result" not in records[good].payload  # a service column, not part of a hand-typed payload
    await store.close()


async def test_setup_columns_adds_the_result_columns_to_a_table_made_before_them(feishu, tmp_path, caplog):
    feishu.add_table(APP_TOKEN, "tblOld", WITHOUT_RESULTS)
    table = FeishuTable.build(feishu.app_id, feishu.app_secret, APP_TOKEN, "tblOld", feishu.url, timeout=5)
    assert await setup_columns(table) == (list(RESULT_COLUMNS), [])
    await table.aclose()
    fields = {f["field_name"]: f for f in feishu.fields(APP_TOKEN, "tblOld")}
    assert [fields[name]["type"] for name in RESULT_COLUMNS] == [1, 1, 5]
    assert fields["FinishedAt"]["property"]["date_formatter"] == "yyyy/MM/dd HH:mm"
    caplog.set_level(logging.WARNING)
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblOld")
    assert not [r for r in caplog.records if "optional columns" in r.getMessage()]
    await store.close()


async def test_a_result_number_too_large_for_a_float_is_written_without_its_mirror(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblMirror", [*DEFAULT_FIELDS, ("score", 2), ("title", 1), ("due", 5)])
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblMirror", status_flush_seconds=3_600)
    (stored,) = await add_all(store, [new_task(1)])
    huge = 10**400
    await store.update([StatusChange(stored.record_id, TaskStatus.PROCESSING, attempts=1)])
    result = {"score": huge, "title": huge, "due": huge}
    assert await store.report([StatusChange(stored.record_id, TaskStatus.SUCCESS, result=result)]) == []
    assert (await store.get([stored.record_id]))[stored.record_id].result == result  # laid over before the write
    await store.pending(10)  # the flush: written, without the mirrors it does not fit
    assert store.backlog().depth == 0
    row = feishu.rows(APP_TOKEN, "tblMirror")[stored.record_id]
    assert row["Status"] == "SUCCESS" and json.loads(row["Result"]) == result
    assert not {"score", "title", "due"} & set(row)
    await store.close()
