"""What only the Bitable adapter promises: Feishu call economy, single writer, retries, reconciliation, shapes."""

import asyncio
import hashlib
import itertools
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.claims import ClaimJournal
from app.errors import Conflict, QuotaExhausted, StoreRejected, StoreUnavailable
from app.main import wire
from app.models import StatusChange, TaskFilter, TaskStatus
from app.store import rebuild
from app.store.bitable import BitableTaskStore
from app.store.columns import COLUMNS, setup_columns
from app.store.feishu import FeishuTable, create_body
from app.store.flusher import Flusher
from app.store.index import State
from app.store.searches import find_identifiers
from app.store.timestamps import to_ms
from tests.support.fakes import FakePublisher, RecordingNotifier
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.settings import bitable_settings
from tests.support.stores import open_store
from tests.support.tasks import add_all, new_task

TRANSIENT_FAULTS = ["rate_limit", "conflict", "not_ready", "too_many", "timeout_code", "server_error", "html_502"]


def writes(emu) -> int:
    return sum(emu.count(e) for e in ("batch_create", "batch_update", "batch_delete"))


def reads(emu) -> int:
    return emu.count("search") + emu.count("batch_get")


async def test_two_thousand_new_payloads_in_two_requests_cost_two_writes_and_no_reads(bitable_store, feishu):
    feishu.reset_calls()
    for start in (0, 1_000):
        stored = await add_all(bitable_store, [new_task(n) for n in range(start, start + 1_000)])
        assert all(s.created for s in stored)
    assert (writes(feishu), reads(feishu)) == (2, 0)
    again = await add_all(bitable_store, [new_task(n) for n in range(0, 2_000, 7)])
    assert not any(s.created for s in again)
    assert (writes(feishu), reads(feishu)) == (2, 0)
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 2_000


async def test_concurrent_requests_are_coalesced_into_one_write(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=50)
    feishu.reset_calls()
    await asyncio.gather(*(add_all(store, [new_task(c * 100 + n) for n in range(40)]) for c in range(8)))
    assert feishu.count("batch_create") == 1
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 320
    await store.close()


async def test_writes_never_overlap_on_the_table(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=0)
    (first,) = await add_all(store, [new_task(0)])
    feishu.latency = 0.05
    await asyncio.gather(
        *(add_all(store, [new_task(c * 100 + n) for n in range(1, 5)]) for c in range(5)),
        *(store.update([StatusChange(first.record_id, TaskStatus.PENDING)]) for _ in range(3)),
    )
    assert feishu.count(code=1254291) == 0
    calls = sorted((c.t_start, c.t_end) for c in feishu.calls if c.endpoint in ("batch_create", "batch_update"))
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(calls))
    await store.close()


async def test_rows_queued_for_the_writer_go_before_a_status_update(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=50)
    claimed = await add_all(store, [new_task(n) for n in range(3)])
    feishu.reset_calls()
    ingest = asyncio.create_task(add_all(store, [new_task(n) for n in range(3, 6)]))
    await asyncio.sleep(0)  # its rows are queued; the writer lingers for more before it takes them
    await store.update([StatusChange(s.record_id, TaskStatus.PROCESSING, attempts=1) for s in claimed])
    assert all(s.created for s in await ingest)
    assert [c.endpoint for c in feishu.calls] == ["batch_create", "batch_update"]
    await store.close()


async def test_the_next_batch_is_reserved_while_a_write_is_in_flight(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=0)
    feishu.reset_calls()
    feishu.latency = 1.0  # a wide window: the second batch must be ready long before the first write answers
    first, second = ([new_task(n) for n in range(start, start + 1_000)] for start in (0, 1_000))
    adds = asyncio.gather(add_all(store, first), add_all(store, second))
    second_ids = [task.identifier for task in second]
    while len(store.index.lookup(second_ids)) < len(second_ids):  # all WRITING: reserved, ready to send
        assert feishu.count("batch_create") == 0, "the second batch was prepared only after the first write answered"
        await asyncio.sleep(0.01)
    assert feishu.count("batch_create") == 0
    assert all(s.created for stored in await adds for s in stored)
    assert feishu.count("batch_create") == 2
    await store.close()


async def test_small_requests_arriving_during_a_write_wait_for_it_and_share_the_next(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=10, feishu_write_max_wait_ms=50)
    feishu.reset_calls()
    feishu.latency = 1.0  # the small requests all arrive while the first write is in flight
    first = asyncio.create_task(add_all(store, [new_task(n) for n in range(1_000)]))
    small = []
    for c in range(8):
        await asyncio.sleep(0.02)  # spread out: each gap is longer than the linger and wait of a batch
        small.append(asyncio.create_task(add_all(store, [new_task(1_000 + c * 40 + n) for n in range(40)])))
    await asyncio.gather(first, *small)
    assert [c.n_records for c in feishu.calls if c.endpoint == "batch_create"] == [1_000, 320]
    await store.close()


async def test_a_request_that_hangs_up_leaves_the_write_it_shares_to_the_others(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=0)
    feishu.latency = 0.2
    tasks = [new_task(n) for n in range(5)]
    leaving = asyncio.create_task(add_all(store, tasks))
    staying = asyncio.create_task(add_all(store, tasks))
    await asyncio.sleep(0)  # both have queued or joined the rows and wait on the same write
    leaving.cancel()
    stored = await staying
    assert leaving.cancelled()
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert {s.record_id for s in stored} == set(rows) and len(rows) == 5
    await store.close()


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
async def test_transient_faults_are_retried_until_the_write_lands_once(bitable_store, feishu, fault):
    feishu.add_fault(fault, endpoint="batch_create", times=2)
    stored = await add_all(bitable_store, [new_task(n) for n in range(10)])
    assert all(s.created for s in stored)
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 10


@pytest.mark.parametrize("answer", ["original", "1254608", "1255006"])
async def test_a_lost_answer_is_retried_with_the_same_client_token_and_stores_once(bitable_store, feishu, answer):
    feishu.repeat_token_answer = answer
    feishu.add_fault("lost_answer", endpoint="batch_create", times=1)
    stored = await add_all(bitable_store, [new_task(n) for n in range(10)])
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert len(rows) == 10
    assert {s.record_id for s in stored} == set(rows)
    assert feishu.count("batch_create") == 2  # a new token on the retry would have written 20 rows
    assert feishu.count("batch_create", code=1254608) == (answer == "1254608")
    assert feishu.count("batch_create", code=1255006) == (answer == "1255006")


# answered with HTTP 200 (the docs' error tables); 1254002 is the emulator's "failed"
HTTP_200_TRANSIENT = ["failed", "1255001", "1255002", "1255003", "1255004", "1255005"]


@pytest.mark.parametrize("landed", [False, True], ids=["not_applied", "landed"])
@pytest.mark.parametrize("fault", HTTP_200_TRANSIENT)
async def test_http_200_transient_codes_are_retried_with_the_same_client_token(bitable_store, feishu, fault, landed):
    feishu.add_fault(fault, endpoint="batch_create", times=1, landed=landed)
    stored = await add_all(bitable_store, [new_task(n) for n in range(10)])
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert len(rows) == 10 and {s.record_id for s in stored} == set(rows)
    assert all(s.created for s in stored)
    assert feishu.count("batch_create") == 2


@pytest.mark.parametrize("answer", ["original", "1254608", "1255006"])
async def test_a_create_that_landed_but_was_answered_1254002_is_looked_up_not_written_again(
    bitable_store, feishu, answer
):
    feishu.repeat_token_answer = answer
    feishu.add_fault("failed", endpoint="batch_create", times=1, landed=True)
    feishu.reset_calls()
    stored = await add_all(bitable_store, [new_task(n) for n in range(10)])
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert len(rows) == 10 and {s.record_id for s in stored} == set(rows)
    assert all(s.created for s in stored)
    # a repeated token's refusal means "may have landed": the rows are found by identifier
    assert feishu.count("search") == (answer != "original")
    assert {e.state for e in bitable_store.index.lookup([s.identifier for s in stored]).values()} == {State.STORED}


@pytest.mark.parametrize("code", ["99991661", "99991663", "99991664", "99991668"])
async def test_a_refused_token_is_fetched_again_and_the_call_sent_again(bitable_store, feishu, code):
    tokens_before = feishu.count("token")
    feishu.add_fault(code, endpoint="batch_create", times=1)
    await add_all(bitable_store, [new_task(1)])
    assert feishu.count("batch_create", code=int(code)) == 1
    assert feishu.count("token") == tokens_before + 1
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1


async def test_an_exhausted_quota_is_a_named_error_that_nothing_retries(bitable_store, feishu):
    feishu.monthly_quota = 0
    feishu.reset_calls()
    with pytest.raises(QuotaExhausted, match="quota"):
        await add_all(bitable_store, [new_task(1)])
    with pytest.raises(QuotaExhausted):
        await bitable_store.pending(10)
    with pytest.raises(QuotaExhausted):
        await bitable_store.check()
    assert (feishu.count("batch_create"), feishu.count("search"), feishu.count("fields_list")) == (1, 1, 1)
    feishu.monthly_quota = None  # the new month: the reserved row is looked up, then written once
    (stored,) = await add_all(bitable_store, [new_task(1)])
    assert stored.created and list(feishu.rows(APP_TOKEN, TABLE_ID)) == [stored.record_id]


async def test_a_page_too_large_to_send_is_read_again_in_smaller_pages(bitable_store, feishu):
    stored = await add_all(bitable_store, [new_task(n, blob="x" * 2_000) for n in range(40)])
    feishu.max_response_bytes = 30_000  # about 12 of these rows
    feishu.reset_calls()
    assert len(await bitable_store.pending(40)) == 40
    # 40 and 20 rows are refused, 10 fit; the pages after the first ask for 10 at once
    assert (feishu.count("search", code=1254030), feishu.count("search", code=0)) == (2, 4)
    assert set(await bitable_store.get([s.record_id for s in stored])) == {s.record_id for s in stored}
    assert feishu.count("batch_get", code=1254030) >= 1


async def test_prune_deletes_the_rest_when_a_delete_names_a_row_already_gone(bitable_store, feishu):
    stored = await add_all(bitable_store, [new_task(n) for n in range(5)])
    await bitable_store.update([StatusChange(s.record_id, TaskStatus.SUCCESS) for s in stored])
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Status": "PENDING"}])
    # the first try lands unanswered; its retry names rows that are gone, and Feishu refuses the batch whole
    feishu.add_fault("lost_answer", endpoint="batch_delete", times=1)
    assert await bitable_store.prune(TaskStatus.SUCCESS, datetime.now(UTC) + timedelta(minutes=1)) == 5
    assert feishu.count("batch_delete", code=1254043) == 1
    assert [row["Status"] for row in feishu.rows(APP_TOKEN, TABLE_ID).values()] == ["PENDING"]


async def test_reads_wait_for_a_write_in_flight_instead_of_meeting_a_conflict(bitable_store, feishu):
    feishu.read_conflicts = True
    feishu.latency = 0.05
    stored = await add_all(bitable_store, [new_task(n) for n in range(5)])
    changes = [StatusChange(s.record_id, TaskStatus.PROCESSING, attempts=1) for s in stored]
    feishu.reset_calls()
    await asyncio.gather(
        *(add_all(bitable_store, [new_task(100 + n)]) for n in range(5)),
        bitable_store.update(changes),
        *(bitable_store.page(TaskStatus.PENDING, 10, None) for _ in range(3)),
        bitable_store.get([s.record_id for s in stored]),
        bitable_store.pending(10),
    )
    assert feishu.count(code=1254291) == 0
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 10


async def test_a_refusal_that_is_not_a_validation_code_neither_splits_nor_drops_the_batch(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_write_linger_ms=50)
    feishu.add_fault("1254041", endpoint="batch_create", times=1)  # not about the rows: the table is not found
    feishu.reset_calls()
    results = await asyncio.gather(
        add_all(store, [new_task(n) for n in range(3)]),
        add_all(store, [new_task(n) for n in range(3, 6)]),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreRejected) for r in results)
    assert feishu.count("batch_create") == 1  # not split into one write per request
    identifiers = [new_task(n).identifier for n in range(6)]
    assert {e.state for e in store.index.lookup(identifiers).values()} == {State.WRITING}  # kept, looked up if resent
    stored = await add_all(store, [new_task(n) for n in range(6)])
    assert all(s.created for s in stored) and len(feishu.rows(APP_TOKEN, TABLE_ID)) == 6
    await store.close()


async def test_the_rate_limit_reset_header_is_honoured(bitable_store, feishu):
    feishu.add_fault("rate_limit", endpoint="batch_create", times=1)
    started = time.monotonic()
    await add_all(bitable_store, [new_task(1)])
    first, second = (c for c in feishu.calls if c.endpoint == "batch_create")
    assert second.t_start - first.t_end >= 1.0  # the emulator's x-ogw-ratelimit-reset is 1 second
    assert time.monotonic() - started >= 1.0


async def test_an_expired_token_is_fetched_again(bitable_store, feishu):
    feishu.expire_tokens()
    tokens_before = feishu.count("token")
    await add_all(bitable_store, [new_task(1)])
    assert feishu.count("batch_create", code=99991663) == 1
    assert feishu.count("token") == tokens_before + 1
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1


async def test_feishu_down_then_back_stores_each_task_exactly_once(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_retry_attempts=3)
    await add_all(store, [new_task(0)])
    feishu.add_fault("lost_answer", endpoint="batch_create", times=1)  # the first try lands, unanswered
    feishu.add_fault("server_error", endpoint="batch_create")
    added = await store.add([new_task(0), new_task(1), new_task(2)])
    assert isinstance(added.error, StoreUnavailable)
    assert added.error.status_code == 503 and added.error.retry_after >= 1
    assert [(s.identifier, s.created) for s in added.stored] == [(new_task(0).identifier, False)]
    assert {e.state for e in store.index.lookup([new_task(1).identifier]).values()} == {State.WRITING}
    feishu.clear_faults()
    feishu.reset_calls()
    again = await add_all(store, [new_task(0), new_task(1), new_task(2), new_task(3)])
    assert [s.created for s in again] == [False, False, False, True]
    assert feishu.count("search") >= 1  # the unconfirmed ones were looked up, not written blindly
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 4
    await store.close()


async def test_a_crash_between_write_and_index_is_reconciled_at_start(feishu, tmp_path):
    store = await open_store(feishu, tmp_path)
    landed, lost = new_task(1), new_task(2)
    store.index.mark_writing([landed.identifier, lost.identifier])
    row = {"Identifier": landed.identifier, "Status": "PENDING", "Payload": landed.canonical, "CreatedAt": 0}
    await store.table.batch_create(create_body([row]), client_token="c3f4a2d8-0000-4000-8000-000000000001")
    await store.close()  # "crash": the index still says WRITING for both
    store = await open_store(feishu, tmp_path)
    entries = store.index.lookup([landed.identifier, lost.identifier])
    assert entries[landed.identifier].state is State.STORED
    assert lost.identifier not in entries
    stored = await add_all(store, [landed, lost])
    assert [s.created for s in stored] == [False, True]
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 2
    await store.close()


async def test_the_index_is_rebuilt_from_the_table_when_data_dir_is_wiped(feishu, tmp_path):
    store = await open_store(feishu, tmp_path / "first")
    await add_all(store, [new_task(n) for n in range(1_203)])
    await store.close()
    feishu.reset_calls()
    store = await open_store(feishu, tmp_path / "wiped")
    searches = [c for c in feishu.calls if c.endpoint == "search"]
    assert len(searches) == 4 + 1  # four parts read at once, each under 500 rows, and the count they must match
    stored = await add_all(store, [new_task(n) for n in range(0, 1_301, 50)])
    assert sum(s.created for s in stored) == 2  # 1,250 and 1,300 are new
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 1_205
    await store.close()


async def test_the_rebuild_reads_every_row_once_and_indexes_each_identifier_typed_by_hand_too(feishu, tmp_path):
    identifiers = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(2_600)]
    ids = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": i, "Status": "PENDING"} for i in identifiers])
    others = [{"Status": "PENDING"}, {"Identifier": ""}, {"Identifier": "typed by hand"}, {"Identifier": "AB" * 32}]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, others)
    store = await open_store(feishu, tmp_path)
    entries = store.index.lookup(identifiers)
    assert {i: e.record_id for i, e in entries.items()} == dict(zip(identifiers, ids, strict=True))
    assert store.index.count() == len(identifiers)
    searches = [c for c in feishu.calls if c.endpoint == "search"]
    assert len(searches) == 4 + 4 + 1  # four parts of ~650 rows, two pages each, and the count they must add up to
    assert sum(c.n_records for c in searches) == len(identifiers) + 2 + 1  # each non-empty Identifier once
    await store.close()


async def test_the_rebuild_parts_search_under_the_rate_limit(feishu, tmp_path):
    rows = [{"Identifier": hashlib.sha256(str(n).encode()).hexdigest()} for n in range(12_000)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    feishu.latency = 0  # unpaced, four parts would send the ~28 pages in a fraction of a second
    store = await open_store(feishu, tmp_path)
    assert store.index.count() == 12_000
    assert feishu.count("search") >= 24 and feishu.count("search", code=99991400) == 0
    await store.close()


async def test_parts_that_miss_rows_are_caught_and_the_table_is_read_whole(feishu, tmp_path, monkeypatch, caplog):
    identifiers = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(1_200)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": i} for i in identifiers])
    partial = rebuild.index_parts()[:2]  # as if Feishu's `contains` matched fewer rows than a substring test
    monkeypatch.setattr(rebuild, "index_parts", lambda: partial)
    with caplog.at_level(logging.WARNING, logger="app.store.rebuild"):
        store = await open_store(feishu, tmp_path)
    assert store.index.count() == len(identifiers)
    assert "reading it whole" in caplog.text
    await store.close()


async def test_a_permanent_refusal_fails_only_the_request_that_caused_it(feishu, tmp_path):
    feishu.stop()
    feishu.add_table(APP_TOKEN, "tblMIRROR", [*_default_fields(), ("Region", 3)])
    feishu.start()
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblMIRROR", feishu_write_linger_ms=50)
    feishu.add_fault("conflict", endpoint="batch_create", times=1)
    good = add_all(store, [new_task(n) for n in range(5)])
    bad = add_all(store, [new_task(99, Region="x" * 100_001)])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(results[1], StoreRejected)
    assert all(s.created for s in results[0])
    assert len(feishu.rows(APP_TOKEN, "tblMIRROR")) == 5
    assert not store.index.lookup([new_task(99).identifier])
    await store.close()


def _default_fields():
    from tests.feishu.emulator import DEFAULT_FIELDS

    return DEFAULT_FIELDS


async def test_mirror_columns_get_matching_payload_keys(feishu, tmp_path):
    fields = [*_default_fields(), ("region", 3), ("score", 2), ("title", 1), ("due", 5), ("Notes", 1)]
    feishu.add_table(APP_TOKEN, "tblM", fields)
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblM")
    payload = {"region": "USA", "score": 1.5, "title": 42, "due": 1_700_000_000_000, "other": "kept in Payload"}
    (stored,) = await add_all(store, [new_task(1, **payload)])
    (bad,) = await add_all(store, [new_task(2, region=["a"], score="high", due="tomorrow")])
    rows = feishu.rows(APP_TOKEN, "tblM")
    assert {k: rows[stored.record_id][k] for k in ("region", "score", "title", "due")} == {
        "region": "USA",
        "score": 1.5,
        "title": "42",
        "due": 1_700_000_000_000,
    }
    assert json.loads(rows[stored.record_id]["Payload"]) == {"n": 1, **payload}
    assert not {"region", "score", "due"} & set(rows[bad.record_id])
    await store.close()


async def test_rows_typed_by_hand_read_back_with_their_plain_columns_as_payload(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblH", [*_default_fields(), ("alpha", 1), ("delay", 2)])
    (record_id,) = feishu.insert_rows(APP_TOKEN, "tblH", [{"alpha": "close/open", "delay": 1, "Status": "PENDING"}])
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblH")
    record = (await store.get([record_id]))[record_id]
    assert record.payload == {"alpha": "close/open", "delay": 1}
    assert record.status is TaskStatus.PENDING
    assert record.identifier is None and record.created_at is None and record.attempts == 0
    page = await store.page(TaskStatus.PENDING, 10, None)
    assert [r.payload for r in page.items] == [{"alpha": "close/open", "delay": 1}]
    await store.close()


async def test_a_table_without_the_required_columns_is_refused_by_name(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblBare", [("Identifier", 1), ("Payload", 2)])
    with pytest.raises(StoreRejected, match=r"Payload .*Status|Status.*Payload"):
        await open_store(feishu, tmp_path, feishu_bitable_table_id="tblBare")


async def test_missing_optional_columns_warn_once_and_switch_their_features_off(feishu, tmp_path, caplog):
    feishu.add_table(APP_TOKEN, "tblMin", _default_fields()[:4])
    caplog.set_level(logging.WARNING)
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblMin")
    warnings = [r for r in caplog.records if "optional columns" in r.getMessage()]
    assert len(warnings) == 1 and "Priority, Attempts, ClaimedAt" in warnings[0].getMessage()
    (stored,) = await add_all(store, [new_task(1, priority=5)])
    await store.update([StatusChange(stored.record_id, TaskStatus.PROCESSING, attempts=1)])
    assert set(feishu.rows(APP_TOKEN, "tblMin")[stored.record_id]) == {"Identifier", "Status", "Payload", "CreatedAt"}
    await store.close()


async def test_a_priority_change_costs_one_read_and_one_write_of_the_priority_cell_alone(bitable_store, feishu):
    pending, claimed = (s.record_id for s in await add_all(bitable_store, [new_task(1), new_task(2)]))
    await bitable_store.update([StatusChange(claimed, TaskStatus.PROCESSING, attempts=1)])
    feishu.reset_calls()
    await bitable_store.set_priority(pending, 7)
    assert (feishu.count("batch_get"), feishu.count("batch_update"), len(feishu.calls)) == (1, 1, 2)
    (update,) = [c for c in feishu.calls if c.endpoint == "batch_update"]
    assert update.n_records == 1
    assert feishu.rows(APP_TOKEN, TABLE_ID)[pending]["Priority"] == 7
    feishu.reset_calls()
    await bitable_store.set_priority(claimed, 7)  # not PENDING: read, not written
    assert (feishu.count("batch_get"), len(feishu.calls)) == (1, 1)
    assert "Priority" not in feishu.rows(APP_TOKEN, TABLE_ID)[claimed]


async def test_a_priority_change_on_a_table_without_priority_is_refused_saying_why_without_a_call(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblMin", _default_fields()[:4])
    store = await open_store(feishu, tmp_path, feishu_bitable_table_id="tblMin")
    try:
        (stored,) = await add_all(store, [new_task(1)])
        feishu.reset_calls()
        with pytest.raises(Conflict, match=r"no Priority column.*setup-bitable"):
            await store.set_priority(stored.record_id, 3)
        assert feishu.calls == []
    finally:
        await store.close()


async def test_updating_unknown_ids_falls_back_to_a_lookup_and_updates_the_rest(bitable_store, feishu):
    stored = await add_all(bitable_store, [new_task(n) for n in range(3)])
    feishu.reset_calls()
    ids = [s.record_id for s in stored]
    not_found = await bitable_store.update([StatusChange(i, TaskStatus.SUCCESS) for i in [*ids, "recGONE0000000000"]])
    assert not_found == ["recGONE0000000000"]
    assert {row["Status"] for row in feishu.rows(APP_TOKEN, TABLE_ID).values()} == {"SUCCESS"}
    assert feishu.count("batch_update") == 2 and feishu.count("batch_get") == 1


# ---- reports: accepted into the outbox, seen at once ----------------------------------------------------

LONG = 3_600  # no flush window ends in these tests: only reads, updates and closes write the outbox


async def claimed_tasks(store: BitableTaskStore, count: int, claimed_at: datetime | None = None) -> list[str]:
    stored = await add_all(store, [new_task(n) for n in range(count)])
    ids = [s.record_id for s in stored]
    at = claimed_at or datetime.now(UTC)
    await store.update([StatusChange(i, TaskStatus.PROCESSING, claimed_at=at, attempts=1) for i in ids])
    return ids


async def test_get_sees_a_report_at_once_laid_over_the_row_without_a_write(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    a, b, c = await claimed_tasks(store, 3)
    feishu.reset_calls()
    changes = [StatusChange(a, TaskStatus.SUCCESS), StatusChange(b, TaskStatus.FAILED)]
    assert await store.report(changes) == []
    await store.report([StatusChange(a, TaskStatus.PENDING)])  # later: wins over the earlier one
    records = await store.get([a, b, c])
    assert [records[i].status for i in (a, b, c)] == [TaskStatus.PENDING, TaskStatus.FAILED, TaskStatus.PROCESSING]
    assert records[a].attempts == 1 and records[a].payload == {"n": 0}  # the rest of the row as read
    assert (feishu.count("batch_update"), feishu.count("batch_get")) == (0, 1)
    assert {row["Status"] for row in feishu.rows(APP_TOKEN, TABLE_ID).values()} == {"PROCESSING"}
    await store.close()


async def test_get_sees_a_reported_result_error_and_finish_time_before_they_are_written(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    done, failed = await claimed_tasks(store, 2)
    finished = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    await store.report(
        [
            StatusChange(done, TaskStatus.SUCCESS, result={"rows": 12, "名": "α"}, finished_at=finished),
            StatusChange(failed, TaskStatus.FAILED, error="ValueError: no data", finished_at=finished),
        ]
    )
    seen = await store.get([done, failed])
    assert (seen[done].result, seen[done].finished_at) == ({"rows": 12, "名": "α"}, finished)
    assert (seen[failed].error, seen[failed].result) == ("ValueError: no data", None)
    await store.pending(1)  # written now: read back from the table, the same
    assert await store.get([done, failed]) == seen
    await store.close()


async def test_lists_counts_and_the_pick_see_reports_at_once(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    done, *_ = await claimed_tasks(store, 2)
    waiting = await add_all(store, [new_task(10), new_task(11)])
    await store.report(
        [StatusChange(done, TaskStatus.SUCCESS), StatusChange(waiting[0].record_id, TaskStatus.CANCELLED)]
    )
    page = await store.page(TaskStatus.SUCCESS, 10, None)
    assert ([r.record_id for r in page.items], page.total) == ([done], 1)
    assert [r.record_id for r in await store.pending(10)] == [waiting[1].record_id]  # the cancelled one is not picked
    assert (await store.counts()).by_status["CANCELLED"] == 1
    assert feishu.count("batch_update", code=0) == 2  # the claim, and one flush for everything the reads saw
    await store.close()


async def test_an_id_not_claimed_here_is_looked_up_once_and_an_unknown_one_answered_not_found(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    (stored,) = await add_all(store, [new_task(1)])
    feishu.reset_calls()
    changes = [StatusChange(stored.record_id, TaskStatus.CANCELLED), StatusChange("recNOPE00000000", TaskStatus.FAILED)]
    assert await store.report(changes) == ["recNOPE00000000"]
    assert await store.report([StatusChange(stored.record_id, TaskStatus.PENDING)]) == []  # found: now known
    assert (feishu.count("batch_get"), feishu.count("batch_update")) == (1, 0)
    assert store.backlog().depth == 2
    await store.close()


async def test_a_report_that_needs_a_lookup_while_feishu_is_down_is_refused_whole(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG, feishu_retry_attempts=1)
    (known,) = await claimed_tasks(store, 1)
    feishu.add_fault("server_error", endpoint="batch_get")
    with pytest.raises(StoreUnavailable):
        await store.report([StatusChange(known, TaskStatus.SUCCESS), StatusChange("recELSE0000000", TaskStatus.FAILED)])
    assert store.backlog().depth == 0  # nothing of it accepted: sending it again is safe
    assert await store.report([StatusChange(known, TaskStatus.SUCCESS)]) == []  # known ids need no call
    await store.close()


async def test_a_direct_write_goes_after_every_report_accepted_before_it(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    (record_id,) = await claimed_tasks(store, 1)
    await store.report([StatusChange(record_id, TaskStatus.FAILED)])
    feishu.reset_calls()
    assert await store.update([StatusChange(record_id, TaskStatus.PENDING, attempts=0)]) == []  # an operator's retry
    assert [c.endpoint for c in feishu.calls] == ["batch_update", "batch_update"]  # the report, then the retry
    assert feishu.rows(APP_TOKEN, TABLE_ID)[record_id]["Status"] == "PENDING"
    assert store.backlog().depth == 0
    await store.close()


async def test_an_update_with_if_still_skips_rows_no_longer_in_that_status(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, status_flush_seconds=LONG)
    reported, still, gone = await claimed_tasks(store, 3)
    await store.report([StatusChange(reported, TaskStatus.SUCCESS)])
    await store.table.batch_delete([gone])
    back = [StatusChange(i, TaskStatus.PENDING, if_still=TaskStatus.PROCESSING) for i in (reported, still, gone)]
    assert sorted(await store.update(back)) == sorted([reported, gone])
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert (rows[reported]["Status"], rows[still]["Status"]) == ("SUCCESS", "PENDING")
    await store.close()


async def test_lease_recovery_never_requeues_a_task_reported_success_that_the_table_has_not_caught_up_with(
    feishu, tmp_path
):
    settings = bitable_settings(feishu, tmp_path, status_flush_seconds=LONG, lease_timeout_hours=1)
    store = BitableTaskStore.from_settings(settings)
    await store.open()
    journal = ClaimJournal(tmp_path / "claims.db")
    journal.open()
    cycle = wire(store, settings, publisher=FakePublisher(), notifier=RecordingNotifier(), journal=journal).cycle
    succeeded, expired = await claimed_tasks(store, 2, claimed_at=datetime.now(UTC) - timedelta(hours=2))
    await store.report([StatusChange(succeeded, TaskStatus.SUCCESS)])
    assert feishu.rows(APP_TOKEN, TABLE_ID)[succeeded]["Status"] == "PROCESSING"  # Bitable has not caught up
    assert await cycle.recover_leases() == (1, 0)  # the expired one alone
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    assert (rows[succeeded]["Status"], rows[expired]["Status"]) == ("SUCCESS", "PENDING")
    journal.close()
    await store.close()


async def test_feishu_timeout_bounds_every_call(feishu, tmp_path):
    store = await open_store(feishu, tmp_path, feishu_timeout_seconds=0.2, feishu_retry_attempts=2)
    feishu.latency = 1.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="timed out"):
        await store.get(["recX"])
    assert time.monotonic() - started < 3
    feishu.latency = 0
    await store.close()


# ---- the searches the store sends ---------------------------------------------------------------

# the filter guide (记录筛选参数填写说明): what each column type takes
DOCUMENTED_OPERATORS = {
    "Identifier": {"is", "isNot", "contains", "doesNotContain", "isEmpty", "isNotEmpty"},
    "Status": {"is", "isNot", "contains", "doesNotContain", "isEmpty", "isNotEmpty"},
    "CreatedAt": {"is", "isEmpty", "isNotEmpty", "isGreater", "isLess"},
    "ClaimedAt": {"is", "isEmpty", "isNotEmpty", "isGreater", "isLess"},
    "Priority": {"is", "isNot", "isGreater", "isGreaterEqual", "isLess", "isLessEqual", "isEmpty", "isNotEmpty"},
}


def _conditions(filter_):
    if not filter_:
        return []
    return [*filter_.get("conditions", []), *(c for child in filter_.get("children", []) for c in child["conditions"])]


def _shape(search) -> tuple:
    """A search without its values: conjunctions, (column, operator) pairs, sort and columns read."""

    def group(g):
        return (g["conjunction"], frozenset((c["field_name"], c["operator"]) for c in g["conditions"]))

    filter_ = search.get("filter_")
    children = frozenset(group(child) for child in filter_.get("children", [])) if filter_ else None
    sort = tuple((s["field_name"], s["desc"]) for s in search.get("sort") or [])
    return (group(filter_) if filter_ else None, children, sort, tuple(search.get("field_names") or ()))


async def test_every_filter_shape_uses_only_documented_operators_and_limits(bitable_store):
    shapes = bitable_store.filter_shapes()
    assert {"pick", "count", "page", "lease_recovery", "prune", "index_count", "identifier_lookup"} <= set(shapes)
    assert sum(name.startswith("index_part_") for name in shapes) == 4
    for name, search in shapes.items():
        filter_ = search.get("filter_")
        conditions = _conditions(filter_)
        assert len(conditions) <= 50, name
        assert len(json.dumps(filter_ or {})) <= 2_000, name
        for condition in conditions:
            assert condition["operator"] in DOCUMENTED_OPERATORS[condition["field_name"]], (name, condition)
            count = len(condition["value"])
            assert count == 0 if condition["operator"] in ("isEmpty", "isNotEmpty") else count >= 1, (name, condition)
            if condition["field_name"] in ("CreatedAt", "ClaimedAt"):
                assert condition["value"][0] == "ExactDate", (name, condition)
        for child in (filter_ or {}).get("children", []):
            assert "children" not in child, name  # one level of children


async def test_feishu_accepts_one_search_of_every_filter_shape(bitable_store, feishu):
    feishu.reset_calls()
    for search in bitable_store.filter_shapes().values():
        await bitable_store.table.search(**search, page_size=1)  # a refused filter raises StoreRejected
    assert feishu.count("search") == feishu.count("search", code=0) == len(bitable_store.filter_shapes())


async def test_filter_shapes_names_every_search_the_store_sends(bitable_store, feishu, monkeypatch):
    sent = []
    search = bitable_store.table.search

    async def recording(**kwargs):
        sent.append(kwargs)
        return await search(**kwargs)

    monkeypatch.setattr(bitable_store.table, "search", recording)
    stored = await add_all(bitable_store, [new_task(n) for n in range(3)])
    await bitable_store.pending(10)
    await bitable_store.processing(datetime.now(UTC))
    await bitable_store.page(TaskStatus.PENDING, 1, None)
    await bitable_store.page(None, 10, None)
    now = datetime.now(UTC)
    every = TaskFilter(1, 0, 2, now - timedelta(days=1), now, "0" * 64)  # unknown to the index: searched
    await bitable_store.page(TaskStatus.FAILED, 10, None, every)
    await bitable_store.counts()  # a small pool: its Status column read
    await bitable_store.newest_failed(10)  # a larger one: the FAILED count reads the newest failures
    await bitable_store.prune(TaskStatus.SUCCESS, datetime.now(UTC))
    await bitable_store.reindex()
    assert await find_identifiers(bitable_store.table, [s.identifier for s in stored])
    shapes = {_shape(s): name for name, s in bitable_store.filter_shapes().items()}
    unnamed = [s for s in sent if _shape(s) not in shapes]
    assert not unnamed, f"searches filter_shapes() does not name: {unnamed}"
    assert {shapes[_shape(s)] for s in sent} == set(shapes.values())


async def test_lease_recovery_and_prune_filter_by_whole_days_and_compare_exact_times_here(feishu, tmp_path):
    now = datetime.now(UTC)
    rows = [
        {"Identifier": f"{n:064x}", "Status": "PROCESSING", "ClaimedAt": to_ms(at), "CreatedAt": to_ms(at)}
        for n, at in enumerate([now - timedelta(days=3), now - timedelta(hours=2), now - timedelta(minutes=1)])
    ]
    ids = feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    store = await open_store(feishu, tmp_path)
    cutoff = now - timedelta(hours=1)
    found = {r.record_id for r in await store.processing(cutoff)}
    assert {ids[0], ids[1]} <= found  # the superset the day filter returns; the service compares exactly
    assert await store.prune(TaskStatus.PROCESSING, cutoff) == 2  # exact: the minute-old row stays
    assert set(feishu.rows(APP_TOKEN, TABLE_ID)) == {ids[2]}
    assert feishu.count("search", code=1254018) == 0
    await store.close()


async def test_setup_columns_creates_dates_with_their_time_of_day(feishu):
    feishu.add_table(APP_TOKEN, "tblNew", [("Name", 1)])
    table = FeishuTable.build(feishu.app_id, feishu.app_secret, APP_TOKEN, "tblNew", feishu.url, timeout=5)
    created, wrong = await setup_columns(table)
    assert set(created) == set(COLUMNS) and wrong == []
    fields = {f["field_name"]: f for f in await _fields_json(feishu, "tblNew")}
    for name in ("CreatedAt", "ClaimedAt"):
        assert fields[name]["property"]["date_formatter"] == "yyyy/MM/dd HH:mm"
    assert [o["name"] for o in fields["Status"]["property"]["options"]] == [s.value for s in TaskStatus]
    await table.aclose()


async def _fields_json(emu, table_id):
    import httpx

    async with httpx.AsyncClient(base_url=emu.url) as http:
        token = (
            await http.post(
                "/open-apis/auth/v3/tenant_access_token/internal",
                json={"app_id": emu.app_id, "app_secret": emu.app_secret},
            )
        ).json()["tenant_access_token"]
        answer = await http.get(
            f"/open-apis/bitable/v1/apps/{APP_TOKEN}/tables/{table_id}/fields",
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.json()["data"]["items"]


async def test_a_close_whose_flusher_fails_still_releases_the_writer_table_outbox_and_index(
    feishu, tmp_path, monkeypatch
):
    store = await open_store(feishu, tmp_path)
    await add_all(store, [new_task(1)])

    async def broken_close(self) -> None:
        raise RuntimeError("a bug in the flusher's close")

    monkeypatch.setattr(Flusher, "close", broken_close)
    with pytest.raises(RuntimeError, match="flusher's close"):
        await store.close()
    with pytest.raises(RuntimeError, match="is not open"):
        store.index.lookup(["0" * 64])
    with pytest.raises(RuntimeError, match="is not open"):
        store.backlog()
    assert "bitable-writer" not in {task.get_name() for task in asyncio.all_tasks()}
    timers = [task for task in asyncio.all_tasks() if task.get_name() == "bitable-flusher"]
    for task in timers:  # the stubbed close left the flusher's timer: stopped here
        task.cancel()
    await asyncio.gather(*timers, return_exceptions=True)
