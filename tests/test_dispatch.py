"""The dispatcher: claims never doubled, and what a crash or a full journal leaves undone, on both stores."""

import asyncio
import json

from app.errors import Conflict, StoreUnavailable
from app.models import PartlyStored, StatusChange, TaskStatus
from app.service import TaskService
from tests.support.processes import claiming_child, process_state, wait_until


async def statuses(service: TaskService) -> dict[str, TaskStatus]:
    page = await service.store.page(None, 500, None)
    return {r.payload["n"]: r.status for r in page.items}


async def test_claims_a_crash_left_unpublished_are_put_back(service, journal, dispatcher):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    journal.begin([(item.record_id, 0)])  # the crash came after the claim, before the publish
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    assert await dispatcher.settle_claims() == 1
    record = (await service.store.get([item.record_id]))[item.record_id]
    assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)
    assert journal.unsettled() == []


async def test_a_claim_finished_by_a_report_while_it_is_settled_is_not_put_back(
    service, journal, dispatcher, monkeypatch
):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    journal.begin([(item.record_id, 0)])
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    read = service.store.get

    async def get_then_a_report_lands(record_ids):
        found = await read(record_ids)  # PROCESSING, as read
        await service.store.report([StatusChange(item.record_id, TaskStatus.SUCCESS)])  # a worker was faster
        return found

    monkeypatch.setattr(service.store, "get", get_then_a_report_lands)
    assert await dispatcher.settle_claims() == 0
    monkeypatch.undo()
    assert (await service.store.get([item.record_id]))[item.record_id].status is TaskStatus.SUCCESS
    assert journal.unsettled() == []


async def test_claims_that_were_published_before_a_crash_stay_processing(service, journal, dispatcher):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    journal.begin([(item.record_id, 0)])
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    journal.mark_published([item.record_id])
    assert await dispatcher.settle_claims() == 0
    assert (await service.store.get([item.record_id]))[item.record_id].status is TaskStatus.PROCESSING


async def test_concurrent_pushes_and_cycles_never_claim_a_task_twice(service, cycle, publisher):
    await service.ingest_tasks([{"n": n} for n in range(20)])
    results = await asyncio.gather(
        service.push_priority([{"n": n} for n in range(0, 20, 2)]),
        service.push_priority([{"n": n} for n in range(0, 20, 3)]),
        cycle.run(),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException) and not isinstance(r, Conflict)] == []
    record_ids = [m.record_id for m, _ in publisher.sent]
    assert record_ids and len(record_ids) == len(set(record_ids))


async def test_claims_of_a_crashed_process_are_put_back_while_it_is_a_zombie(service, journal, dispatcher):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    with claiming_child(journal.path, item.record_id) as child:
        assert await dispatcher.settle_claims() == 0, "its owner is alive: it may still be publishing"
        child.kill()
        wait_until(lambda: process_state(child.pid) == "Z", 10, "the child to become a zombie", 0.05)
        assert await dispatcher.settle_claims() == 1
    record = (await service.store.get([item.record_id]))[item.record_id]
    assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)
    assert journal.unsettled() == []


async def test_a_full_claim_journal_is_a_store_unavailable_and_a_failed_cycle(
    service, journal, cycle, publisher, notifier
):
    await service.ingest_tasks([{"n": n} for n in range(300)])  # their claims need more pages than the journal has
    service.settings.replenish_batch_size = 300
    db = journal.db
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    partly = await service.push_priority([{"n": n} for n in range(300)])
    assert isinstance(partly, PartlyStored) and isinstance(partly.error, StoreUnavailable)
    assert partly.error.status_code == 503 and partly.error.headers["Retry-After"]
    assert json.dumps(partly.items)  # plain JSON for the 503 body
    report = await cycle.run()
    assert report.outcome == "failed" and "full" in report.error
    assert [n.level for n in notifier.notices] == ["error"] and publisher.sent == []
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}
