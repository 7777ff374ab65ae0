"""One contract, both adapters: every test here runs against SQLite and against Bitable (emulator)."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from app.errors import InvalidInput
from app.models import StatusChange, TaskFilter, TaskStatus
from app.store.sqlite import SqliteTaskStore
from tests.support.tasks import add_all, new_task
from tests.support.waits import eventually


async def test_add_creates_pending_records_readable_by_id(store):
    stored = await add_all(store, [new_task(1, priority=7), new_task(2)])
    assert [s.created for s in stored] == [True, True]
    assert all(s.record_id for s in stored)
    records = await store.get([s.record_id for s in stored])
    first = records[stored[0].record_id]
    assert first.payload == {"n": 1}
    assert first.identifier == stored[0].identifier
    assert first.status is TaskStatus.PENDING
    assert first.priority == 7
    assert first.attempts == 0
    assert abs((datetime.now(UTC) - first.created_at).total_seconds()) < 60
    assert records[stored[1].record_id].priority is None


async def test_add_skips_identifiers_seen_before(store):
    first = await add_all(store, [new_task(1), new_task(2)])
    again = await add_all(store, [new_task(2), new_task(3)])
    assert [s.created for s in again] == [False, True]
    assert again[0].record_id == first[1].record_id
    assert (await store.lookup([first[0].identifier, "0" * 64])) == {first[0].identifier: first[0].record_id}


async def test_add_answers_a_value_in_task_order_with_no_error_when_every_task_landed(store):
    await add_all(store, [new_task(1)])
    added = await store.add([new_task(2), new_task(1)])
    assert added.error is None
    assert [(s.identifier, s.created) for s in added.stored] == [
        (new_task(2).identifier, True),
        (new_task(1).identifier, False),
    ]


async def test_concurrent_adds_store_each_identifier_once(store):
    batches = [[new_task(n) for n in range(start, start + 30)] for start in range(0, 100, 10)]
    results = await asyncio.gather(*(add_all(store, batch) for batch in batches))
    by_identifier: dict[str, set[str]] = {}
    created = {}
    for stored in (s for batch in results for s in batch):
        by_identifier.setdefault(stored.identifier, set()).add(stored.record_id)
        created[stored.identifier] = created.get(stored.identifier, 0) + stored.created
    assert len(by_identifier) == 120
    assert all(len(ids) == 1 for ids in by_identifier.values())
    assert set(created.values()) == {1}
    page = await store.page(None, 500, None)
    assert page.total == 120


async def test_update_applies_known_ids_and_reports_the_rest(store):
    stored = await add_all(store, [new_task(1), new_task(2)])
    a, b = (s.record_id for s in stored)
    not_found = await store.update(
        [StatusChange(a, TaskStatus.SUCCESS), StatusChange("recMISSING00000", TaskStatus.FAILED)]
    )
    assert not_found == ["recMISSING00000"]
    records = await store.get([a, b])
    assert records[a].status is TaskStatus.SUCCESS
    assert records[b].status is TaskStatus.PENDING


async def test_update_writes_claim_fields(store):
    (stored,) = await add_all(store, [new_task(1)])
    claimed_at = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    await store.update([StatusChange(stored.record_id, TaskStatus.PROCESSING, claimed_at=claimed_at, attempts=2)])
    record = (await store.get([stored.record_id]))[stored.record_id]
    assert record.status is TaskStatus.PROCESSING
    assert record.claimed_at == claimed_at
    assert record.attempts == 2


async def test_set_priority_writes_a_pending_tasks_priority_only_and_the_pick_follows_it(store):
    low, high, other = (s.record_id for s in await add_all(store, [new_task(1), new_task(2, priority=5), new_task(3)]))
    assert [r.record_id for r in await store.pending(3)] == [high, low, other]
    changed = await store.set_priority(other, 9)
    assert (changed.status, changed.priority, changed.payload, changed.attempts) == (TaskStatus.PENDING, 9, {"n": 3}, 0)
    assert await store.set_priority(low, -2) is not None
    assert [r.record_id for r in await store.pending(3)] == [other, high, low]
    assert (await store.get([other]))[other].priority == 9


async def test_set_priority_leaves_a_task_that_is_not_pending_as_it_is_and_answers_none_for_no_task(store):
    claimed, waiting = (s.record_id for s in await add_all(store, [new_task(1, priority=3), new_task(2, priority=3)]))
    await store.update([StatusChange(claimed, TaskStatus.PROCESSING, attempts=1)])
    await store.report([StatusChange(waiting, TaskStatus.CANCELLED)])  # on Bitable, still in the outbox: read first
    for record_id, status in ((claimed, TaskStatus.PROCESSING), (waiting, TaskStatus.CANCELLED)):
        answered = await store.set_priority(record_id, 8)
        assert (answered.status, answered.priority) == (status, 3)
        assert (await store.get([record_id]))[record_id].priority == 3
    assert await store.set_priority("recMISSING00000", 8) is None


async def test_get_ignores_unknown_ids(store):
    assert await store.get(["recNOPE000000000"]) == {}


async def test_page_filters_by_status_and_pages_through_everything(store):
    stored = await add_all(store, [new_task(n) for n in range(25)])
    await store.update([StatusChange(s.record_id, TaskStatus.FAILED) for s in stored[:5]])
    seen, token = [], None
    while True:
        page = await store.page(TaskStatus.PENDING, 7, token)
        assert page.total == 20
        assert len(page.items) <= 7
        seen += [record.record_id for record in page.items]
        if not (token := page.next_page_token):
            break
    assert sorted(seen) == sorted(s.record_id for s in stored[5:])
    failed = await store.page(TaskStatus.FAILED, 100, None)
    assert {r.record_id for r in failed.items} == {s.record_id for s in stored[:5]}


async def test_page_refuses_a_token_it_never_gave(store):
    with pytest.raises(InvalidInput):
        await store.page(None, 10, "not-a-token")


async def test_dedup_survives_a_restart(store):
    (first,) = await add_all(store, [new_task(1)])
    await store.close()
    await store.open()
    (again,) = await add_all(store, [new_task(1)])
    assert (again.created, again.record_id) == (False, first.record_id)


async def test_reindex_counts_every_identifier(store):
    await add_all(store, [new_task(n) for n in range(12)])
    assert await store.reindex() == 12


# ---- workers' results and errors ------------------------------------------------------------------------------

FINISHED = datetime(2026, 11, 1, 12, 31, 5, 123000, tzinfo=UTC)  # whole ms: both stores keep milliseconds


async def test_a_report_writes_result_error_and_finish_time_and_every_read_returns_them(store):
    a, b = (s.record_id for s in await add_all(store, [new_task(1), new_task(2)]))
    result = {"score": 1.5, "名称": ["α", {"deep": None}], "ok": True}
    not_found = await store.report(
        [
            StatusChange(a, TaskStatus.SUCCESS, result=result, finished_at=FINISHED),
            StatusChange(b, TaskStatus.FAILED, error="ValueError: no data\n  line 2", finished_at=FINISHED),
        ]
    )
    assert not_found == []
    records = await store.get([a, b])
    assert (records[a].result, records[a].error, records[a].finished_at) == (result, None, FINISHED)
    assert (records[b].result, records[b].error, records[b].finished_at) == (
        None,
        "ValueError: no data\n  line 2",
        FINISHED,
    )
    listed = {r.record_id: r for r in (await store.page(None, 10, None)).items}
    assert (listed[a].result, listed[b].error, listed[b].finished_at) == (result, records[b].error, FINISHED)


async def test_a_report_that_carries_no_result_or_error_keeps_the_last_ones(store):
    (stored,) = await add_all(store, [new_task(1)])
    record_id = stored.record_id
    await store.report(
        [StatusChange(record_id, TaskStatus.FAILED, result={"partial": 1}, error="boom", finished_at=FINISHED)]
    )
    await store.update([StatusChange(record_id, TaskStatus.PENDING, attempts=0)])  # an operator's retry
    kept = (await store.get([record_id]))[record_id]
    assert (kept.status, kept.result, kept.error, kept.finished_at) == (
        TaskStatus.PENDING,
        {"partial": 1},
        "boom",
        FINISHED,
    )
    later = FINISHED.replace(minute=45)
    await store.report([StatusChange(record_id, TaskStatus.SUCCESS, finished_at=later)])
    done = (await store.get([record_id]))[record_id]
    assert (done.status, done.result, done.error, done.finished_at) == (
        TaskStatus.SUCCESS,
        {"partial": 1},
        "boom",
        later,
    )
    await store.report([StatusChange(record_id, TaskStatus.SUCCESS, result={}, finished_at=later)])
    assert (await store.get([record_id]))[record_id].result == {}  # an empty object is a result too


async def test_a_report_for_an_unknown_record_writes_nothing_and_names_it(store):
    (stored,) = await add_all(store, [new_task(1)])
    not_found = await store.report(
        [
            StatusChange("recMISSING00000", TaskStatus.SUCCESS, result={"a": 1}, finished_at=FINISHED),
            StatusChange(stored.record_id, TaskStatus.SUCCESS, result={"b": 2}, finished_at=FINISHED),
        ]
    )
    assert not_found == ["recMISSING00000"]
    assert (await store.get([stored.record_id]))[stored.record_id].result == {"b": 2}


# ---- filters: priority, created-at, identifier (issue 15) -----------------------------------------------------


async def all_pages(store, status, where, limit=2) -> tuple[list, list]:
    """Every page of a filtered list, following next_page_token to the end: its records and each page's total."""
    records, totals, token = [], [], None
    while True:
        page = await store.page(status, limit, token, where)
        records += page.items
        totals.append(page.total)
        if not (token := page.next_page_token):
            return records, totals


async def test_priority_filters_are_exact_and_inclusive_ranges(store):
    stored = await add_all(store, [new_task(n, priority=n) for n in range(6)] + [new_task(9)])
    by_n = {s.identifier: n for n, s in enumerate(stored)}

    async def ns(**bounds) -> list[int]:
        records, _ = await all_pages(store, None, TaskFilter(**bounds), limit=500)
        return sorted(by_n[r.identifier] for r in records)

    assert await ns(priority=3) == [3]
    assert await ns(priority_min=2, priority_max=4) == [2, 3, 4]
    assert await ns(priority_min=5) == [5]  # the task without a priority matches no bound
    assert await ns(priority_max=0) == [0]
    await store.update([StatusChange(stored[4].record_id, TaskStatus.FAILED)])
    page = await store.page(TaskStatus.PENDING, 500, None, TaskFilter(priority_min=2, priority_max=4))
    assert sorted(by_n[r.identifier] for r in page.items) == [2, 3]
    assert page.total == 2


async def test_created_bounds_compare_the_exact_millisecond_and_page_to_the_end(store):
    early = await add_all(store, [new_task(n) for n in range(5)])
    first = max((await store.get([s.record_id for s in early])).values(), key=lambda r: r.created_at).created_at
    await eventually(lambda: datetime.now(UTC) - first >= timedelta(milliseconds=2), 5, "the clock to move on")
    late = await add_all(store, [new_task(n) for n in range(5, 8)])
    boundary = min((await store.get([s.record_id for s in late])).values(), key=lambda r: r.created_at).created_at
    late_ids = {s.record_id for s in late}
    exact = isinstance(store, SqliteTaskStore)  # Bitable filters by day, then compares: no exact total

    after, totals = await all_pages(store, None, TaskFilter(created_after=boundary))  # inclusive
    assert {r.record_id for r in after} == late_ids
    assert totals[0] == (3 if exact else None)
    before, _ = await all_pages(store, None, TaskFilter(created_before=boundary))  # exclusive
    assert {r.record_id for r in before} == {s.record_id for s in early}
    window = TaskFilter(created_after=first, created_before=boundary + timedelta(milliseconds=1))
    inside, _ = await all_pages(store, TaskStatus.PENDING, window)
    assert late_ids <= {r.record_id for r in inside}
    assert [r.created_at for r in inside] == sorted(r.created_at for r in inside)  # creation order


async def test_an_identifier_finds_its_task_with_the_other_filters_applied(store):
    stored = await add_all(store, [new_task(1, priority=3), new_task(2)])
    page = await store.page(None, 10, None, TaskFilter(identifier=stored[0].identifier))
    assert [r.record_id for r in page.items] == [stored[0].record_id]
    assert page.total == 1
    assert not (await store.page(TaskStatus.FAILED, 10, None, TaskFilter(identifier=stored[0].identifier))).items
    assert not (await store.page(None, 10, None, TaskFilter(identifier=stored[0].identifier, priority=4))).items
    unknown = await store.page(None, 10, None, TaskFilter(identifier="f" * 64))
    assert (unknown.items, unknown.total) == ([], 0)


async def test_a_filtered_status_page_sees_reports_accepted_a_moment_ago(store):
    stored = await add_all(store, [new_task(n, priority=5) for n in range(3)])
    await store.report([StatusChange(stored[1].record_id, TaskStatus.FAILED, error="boom")])
    page = await store.page(TaskStatus.FAILED, 10, None, TaskFilter(priority_min=5))
    assert [r.record_id for r in page.items] == [stored[1].record_id]
    by_identifier = await store.page(TaskStatus.FAILED, 10, None, TaskFilter(identifier=stored[1].identifier))
    assert [r.error for r in by_identifier.items] == ["boom"]
