"""The pool's rules (ingest, the priority push, a priority change, stats), on both stores, with a fake publisher
and a hand-moved clock."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from app.errors import BrokerUnavailable, Conflict, InvalidInput, NotFound, QueueMissing
from app.identity import task_identifier
from app.models import BulkStatusUpdate, ReportItem, StatusChange, TaskFilter, TaskStatus
from app.service import TaskService


async def statuses(service: TaskService) -> dict[str, TaskStatus]:
    page = await service.store.page(None, 500, None)
    return {r.payload["n"]: r.status for r in page.items}


async def test_priority_push_outcomes(service, publisher):
    items = (await service.ingest_tasks([{"n": n} for n in range(4)])).items
    pending, processing, done, cancelled = (item.record_id for item in items)
    await service.store.update(
        [
            StatusChange(processing, TaskStatus.PROCESSING, attempts=1),
            StatusChange(done, TaskStatus.SUCCESS),
            StatusChange(cancelled, TaskStatus.CANCELLED),
        ]
    )
    answer = await service.push_priority([{"n": n} for n in (0, 1, 2, 3, 9, 9)])
    assert [i.outcome for i in answer.items] == [
        "published",
        "already_queued",
        "already_done",
        "already_done",
        "published",
        "published",
    ]
    assert answer.items[4].record_id == answer.items[5].record_id
    assert (answer.received, answer.published) == (6, 2)
    assert {priority for _, priority in publisher.sent} == {service.settings.priorities[1]}
    records = await service.store.get([pending, answer.items[4].record_id])
    assert {r.status for r in records.values()} == {TaskStatus.PROCESSING}
    forced = await service.push_priority([{"n": 1}, {"n": 2}], force=True)
    assert [i.outcome for i in forced.items] == ["published", "published"]
    assert (await service.store.get([processing]))[processing].attempts == 2


async def test_priority_push_that_cannot_publish_is_deferred_and_stays_pending(service, publisher):
    publisher.error = QueueMissing("no queue")
    answer = await service.push_priority([{"n": 1}])
    assert [i.outcome for i in answer.items] == ["deferred"] and answer.published == 0
    record = (await service.store.get([answer.items[0].record_id]))[answer.items[0].record_id]
    assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)


async def test_a_priority_change_is_what_the_next_cycle_picks_by(service, cycle, publisher):
    items = (await service.ingest_tasks([{"n": n} for n in range(4)], priority=1)).items
    changed = await service.change_priority(items[3].record_id, 1_000_000)
    assert (changed.status, changed.priority) == (TaskStatus.PENDING, 1_000_000)
    await service.change_priority(items[0].record_id, -1_000_000)
    service.settings.replenish_batch_size = 2
    report = await cycle.run()
    assert report.published == 2
    assert [m.payload["n"] for m, _ in publisher.sent] == [3, 1]
    await cycle.run()
    assert [m.payload["n"] for m, _ in publisher.sent] == [3, 1, 2, 0]


async def test_a_priority_change_refuses_a_missing_task_one_not_pending_and_a_priority_out_of_range(service):
    (item,) = (await service.ingest_tasks([{"n": 1}], priority=4)).items
    with pytest.raises(NotFound, match="recMISSING00000"):
        await service.change_priority("recMISSING00000", 1)
    for priority in (1_000_001, -1_000_001):
        with pytest.raises(InvalidInput, match="out of range"):
            await service.change_priority(item.record_id, priority)
    await service.cancel_task(item.record_id)
    with pytest.raises(Conflict, match=f"task {item.record_id} is CANCELLED; only a PENDING task's priority"):
        await service.change_priority(item.record_id, 9)
    assert (await service.get_task(item.record_id)).priority == 4


async def test_a_priority_change_waits_for_a_pick_in_progress_and_then_finds_the_task_claimed(service, dispatcher):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    async with dispatcher.claiming:  # as a cycle holds it from its pick to its claim
        picked = await service.store.pending(10)
        change = asyncio.create_task(service.change_priority(item.record_id, 50))
        done, _ = await asyncio.wait({change}, timeout=0.5)
        assert not done  # it does not write while the pick that read the old priority has not claimed yet
        await dispatcher.claim(picked)
    with pytest.raises(Conflict, match="is PROCESSING"):
        await change
    assert (await service.get_task(item.record_id)).priority is None


async def test_stats_count_every_status_and_remember_the_last_cycle(service, cycle, publisher):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    await cycle.run()
    stats = await service.stats()
    assert stats.counts == {"PENDING": 0, "PROCESSING": 3, "SUCCESS": 0, "FAILED": 0, "CANCELLED": 0}
    assert stats.queue_depth == 3 and stats.queue_error is None
    assert stats.last_replenish.published == 3
    publisher.error = BrokerUnavailable("broker down")
    error = (await service.stats()).queue_error
    assert (error.error, error.detail) == ("broker_unavailable", "broker down")


async def test_stats_show_the_cycles_newest_first_and_the_newest_failures_with_their_errors(service, cycle, clock):
    ids = [item.record_id for item in (await service.ingest_tasks([{"n": n} for n in range(12)])).items]
    first = await cycle.run()
    clock.advance(hours=4)
    await cycle.run(dry_run=True)  # a dry run is not kept
    second = await cycle.run()
    for n, record_id in enumerate(ids[:11]):
        clock.advance(seconds=1)
        await service.update_status(BulkStatusUpdate(FAILED=[ReportItem(record_id=record_id, error=f"boom {n}")]))
    await service.update_status(BulkStatusUpdate(SUCCESS=[ids[11]]))
    waiting, written = await service.stats(), await service.stats()  # Bitable: reports waiting, then written
    for stats in (waiting, written):
        assert [c.started_at for c in stats.recent_cycles] == [second.started_at, first.started_at]
        assert stats.last_replenish == stats.recent_cycles[0]
        assert stats.counts["FAILED"] == 11
        assert [f.error for f in stats.recent_failures] == [f"boom {n}" for n in range(10, 0, -1)]
        newest = stats.recent_failures[0]
        assert (newest.record_id, newest.identifier, newest.finished_at) == (
            ids[10],
            task_identifier({"n": 10}),
            clock(),
        )
    assert (written.feishu is None) == (service.store.feishu_usage() is None)


async def test_a_big_batch_is_canonicalized_and_hashed_off_the_event_loop(service, monkeypatch):
    threads = []
    validate = TaskService.new_tasks

    def watched(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(TaskService, "new_tasks", watched)
    big = await service.ingest_tasks([{"n": n} for n in range(101)])
    small = await service.push_priority([{"n": 1}])
    assert threads[0] != threading.get_ident(), "101 payloads: on a worker thread"
    assert threads[1] == threading.get_ident(), "one payload: inline, a thread hop would cost more"
    assert big.created == 101 and big.items[1].identifier == task_identifier({"n": 1})
    assert small.items[0].outcome == "published"


# ---- bulk retry and cancel (issue 15) ---------------------------------------------------------------------------


async def test_bulk_retry_resets_attempts_as_the_single_retry_does(service):
    items = (await service.ingest_tasks([{"n": n} for n in range(3)])).items
    record_ids = [item.record_id for item in items]
    await service.store.update([StatusChange(r, TaskStatus.FAILED, attempts=3) for r in record_ids])
    answer = await service.retry_failed(TaskFilter())
    assert (answer.matched, answer.changed, answer.more) == (3, 3, False)
    records = (await service.store.get(record_ids)).values()
    assert {(r.status, r.attempts) for r in records} == {(TaskStatus.PENDING, 0)}


async def test_one_bulk_action_touches_at_most_the_cap_oldest_first(service, monkeypatch):
    monkeypatch.setattr("app.service.BULK_LIMIT", 3)
    monkeypatch.setattr("app.service._BULK_PAGE", 2)  # the cap falls inside a page: the rest are left alone
    record_ids = [item.record_id for item in (await service.ingest_tasks([{"n": n} for n in range(5)])).items]
    dry = await service.cancel_pending(TaskFilter(), dry_run=True)
    assert (dry.matched, dry.changed, dry.more) == (3, 0, True)
    done = await service.cancel_pending(TaskFilter())
    assert (done.matched, done.changed, done.more) == (3, 3, True)
    records = await service.store.get(record_ids)
    assert [records[r].status for r in record_ids] == [TaskStatus.CANCELLED] * 3 + [TaskStatus.PENDING] * 2
    last = await service.cancel_pending(TaskFilter())
    assert (last.matched, last.changed, last.more) == (2, 2, False)


async def test_a_filter_that_can_match_nothing_is_refused(service):
    with pytest.raises(InvalidInput, match="priority_min"):
        service.task_filter(priority_min=3, priority_max=2)
    with pytest.raises(InvalidInput, match="time zone"):
        service.task_filter(created_after=datetime(2026, 12, 1))
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="earlier"):
        service.task_filter(created_after=moment, created_before=moment)
    assert service.task_filter(created_after=moment + timedelta(microseconds=1500)).created_after == moment + timedelta(
        milliseconds=1
    )
