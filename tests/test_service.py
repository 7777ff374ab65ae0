"""The rules of the queue side, on both stores, with a fake publisher and a hand-moved clock."""

import asyncio
import errno
import json
import logging
import threading
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from app.errors import BrokerUnavailable, Conflict, QueueMissing, StoreUnavailable
from app.identity import task_identifier
from app.models import StatusChange, TaskStatus
from app.service import TaskService
from app.store.journal import ClaimJournal
from tests.support.fakes import Clock, FakePublisher, RecordingNotifier
from tests.support.processes import claiming_child, process_state, wait_until
from tests.support.settings import make_settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def make_service(store, tmp_path, publisher, notifier, clock):
    journals = []

    def build(**overrides) -> TaskService:
        settings = make_settings(tmp_path / "svc", **({"replenish_batch_size": 10} | overrides))
        journal = ClaimJournal(settings.data_dir / "claims.db")
        journal.open()
        journals.append(journal)
        return TaskService(store, settings, publisher=publisher, notifier=notifier, journal=journal, clock=clock)

    yield build
    for journal in journals:
        journal.close()


@pytest.fixture
def service(make_service) -> TaskService:
    return make_service()


async def statuses(service: TaskService) -> dict[str, TaskStatus]:
    page = await service.store.page(None, 500, None)
    return {r.payload["n"]: r.status for r in page.items}


async def test_replenish_claims_highest_priority_then_oldest_and_publishes_them(service, publisher, clock):
    await service.ingest_tasks([{"n": n} for n in range(5)])
    await service.ingest_tasks([{"n": 10}], priority=1)
    await service.ingest_tasks([{"n": 11}], priority=9)
    service.settings.replenish_batch_size = 4
    report = await service.replenish()
    assert (report.outcome, report.published, report.failed, report.pending_left) == ("published", 4, 0, 3)
    assert [m.payload["n"] for m, _ in publisher.sent][:2] == [11, 10]
    assert [m.payload["n"] for m, _ in publisher.sent] == [11, 10, 0, 1]
    assert {priority for _, priority in publisher.sent} == {service.settings.priorities[0]}
    claimed = await service.store.get([m.record_id for m, _ in publisher.sent])
    assert all(
        r.status is TaskStatus.PROCESSING and r.attempts == 1 and r.claimed_at == clock.now for r in claimed.values()
    )
    assert report.depth_before == 0 and report.depth_after == 4


async def test_a_full_queue_means_nothing_to_do(make_service, publisher, notifier):
    service = make_service(replenish_threshold=3)
    await service.ingest_tasks([{"n": 1}])
    publisher.depth = 3
    report = await service.replenish()
    assert (report.outcome, report.published) == ("skipped", 0)
    assert publisher.sent == [] and notifier.notices == []


async def test_dry_run_reports_and_changes_nothing(service, publisher, notifier):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    report = await service.replenish(dry_run=True)
    assert (report.outcome, report.claimed, report.published) == ("dry_run", 3, 0)
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}
    assert publisher.sent == [] and notifier.notices == []


async def test_tasks_that_fail_to_publish_go_back_to_pending_with_their_attempts(service, publisher):
    stored = (await service.ingest_tasks([{"n": n} for n in range(4)])).items
    publisher.fail_ids = {stored[1].record_id, stored[3].record_id}
    report = await service.replenish()
    assert (report.published, report.failed) == (2, 2)
    records = await service.store.get([item.record_id for item in stored])
    assert [records[i.record_id].status for i in stored] == [TaskStatus.PROCESSING, TaskStatus.PENDING] * 2
    assert [records[i.record_id].attempts for i in stored] == [1, 0, 1, 0]
    assert service.journal.unsettled() == []


@pytest.mark.parametrize("error", [QueueMissing("queue 'q' does not exist"), BrokerUnavailable("down")])
async def test_a_missing_queue_or_broker_publishes_nothing_and_says_so(service, publisher, notifier, error):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    publisher.error = error
    report = await service.replenish()
    assert report.outcome == "failed" and error.detail in report.error
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}
    assert [n.level for n in notifier.notices] == ["error"]


async def test_the_bot_hears_about_each_cycle_with_the_right_colour(make_service, publisher, notifier):
    service = make_service(replenish_batch_size=2)
    await service.ingest_tasks([{"n": n} for n in range(5)])
    await service.replenish()  # a full batch, 3 left ≥ batch of 2: fine
    await service.replenish()  # a full batch, 1 left: low
    await service.replenish()  # the last one: the pool held less than a batch, all of it went out
    await service.replenish()  # nothing to publish while the queue is low: exhausted
    assert [(n.level, n.title) for n in notifier.notices] == [
        ("ok", "Queue replenished"),
        ("warning", "Task pool running low"),
        ("ok", "Queue replenished"),
        ("warning", "Task pool exhausted"),
    ]
    assert any("PENDING left in the pool**: 1" in line for line in notifier.notices[1].lines)


async def test_a_small_cycle_is_good_news_not_a_warning(service, notifier, caplog):
    caplog.set_level(logging.INFO)
    await service.ingest_tasks([{"n": n} for n in range(3)])  # fewer than one batch (10)
    report = await service.replenish()
    assert (report.outcome, report.published, report.pending_left) == ("published", 3, 0)
    assert [(n.level, n.title) for n in notifier.notices] == [("ok", "Queue replenished")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("error", [QueueMissing("queue 'q' does not exist"), BrokerUnavailable("down")])
async def test_a_failed_cycle_is_logged_as_an_error_and_its_card_shows_no_none(
    service, publisher, notifier, caplog, error
):
    caplog.set_level(logging.INFO)
    await service.ingest_tasks([{"n": 1}])
    publisher.error = error
    report = await service.replenish()
    assert report.outcome == "failed" and report.depth_before is None
    [card] = notifier.notices
    assert "None" not in "\n".join(card.lines), card.lines
    assert any("unknown" in line and "`celery`" in line for line in card.lines), card.lines
    [logged] = [r for r in caplog.records if r.getMessage().startswith("replenish:")]
    assert logged.levelno == logging.ERROR and error.detail in logged.getMessage()


async def test_lease_recovery_requeues_expired_claims_fails_spent_ones_and_leaves_live_ones(make_service, clock):
    service = make_service(lease_timeout_hours=24, max_attempts=3)
    items = (await service.ingest_tasks([{"n": n} for n in range(3)])).items
    expired, spent, live = (item.record_id for item in items)
    await service.store.update(
        [
            StatusChange(expired, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=25), attempts=1),
            StatusChange(spent, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=25), attempts=3),
            StatusChange(live, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=23), attempts=1),
        ]
    )
    assert await service.recover_leases() == (1, 1)
    records = await service.store.get([expired, spent, live])
    assert [records[r].status for r in (expired, spent, live)] == [
        TaskStatus.PENDING,
        TaskStatus.FAILED,
        TaskStatus.PROCESSING,
    ]
    clock.advance(hours=1, seconds=1)
    assert await service.recover_leases() == (1, 0)


async def test_lease_recovery_compares_exact_times_within_the_same_day(make_service, clock):
    service = make_service(lease_timeout_hours=1)
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update(
        [StatusChange(item.record_id, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(minutes=59), attempts=1)]
    )
    assert await service.recover_leases() == (0, 0)
    clock.advance(minutes=2)
    assert await service.recover_leases() == (1, 0)


async def test_lease_recovery_is_off_at_zero(make_service, clock):
    service = make_service(lease_timeout_hours=0)
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update(
        [StatusChange(item.record_id, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(days=9), attempts=1)]
    )
    assert await service.recover_leases() == (0, 0)


async def test_claims_a_crash_left_unpublished_are_put_back(service):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    service.journal.begin([(item.record_id, 0)])  # the crash came after the claim, before the publish
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    assert await service.settle_claims() == 1
    record = (await service.store.get([item.record_id]))[item.record_id]
    assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)
    assert service.journal.unsettled() == []


async def test_claims_that_were_published_before_a_crash_stay_processing(service):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    service.journal.begin([(item.record_id, 0)])
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    service.journal.mark_published([item.record_id])
    assert await service.settle_claims() == 0
    assert (await service.store.get([item.record_id]))[item.record_id].status is TaskStatus.PROCESSING


async def test_one_cycle_at_a_time(service):
    assert service._cycle.acquire()  # another process is mid-cycle
    with pytest.raises(Conflict):
        await service.replenish()
    service._cycle.release()
    assert (await service.replenish()).outcome == "nothing_pending"


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


async def test_concurrent_pushes_and_cycles_never_claim_a_task_twice(service, publisher):
    await service.ingest_tasks([{"n": n} for n in range(20)])
    await asyncio.gather(
        service.push_priority([{"n": n} for n in range(0, 20, 2)]),
        service.push_priority([{"n": n} for n in range(0, 20, 3)]),
        service.replenish(),
        return_exceptions=True,
    )
    record_ids = [m.record_id for m, _ in publisher.sent]
    assert len(record_ids) == len(set(record_ids))


async def test_stats_count_every_status_and_remember_the_last_cycle(service, publisher):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    await service.replenish()
    stats = await service.stats()
    assert stats.counts == {"PENDING": 0, "PROCESSING": 3, "SUCCESS": 0, "FAILED": 0, "CANCELLED": 0}
    assert stats.queue_depth == 3 and stats.queue_error is None
    assert stats.last_replenish.published == 3
    publisher.error = BrokerUnavailable("broker down")
    error = (await service.stats()).queue_error
    assert (error.error, error.detail) == ("broker_unavailable", "broker down")


async def test_claims_of_a_crashed_process_are_put_back_while_it_is_a_zombie(service):
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update([StatusChange(item.record_id, TaskStatus.PROCESSING, attempts=1)])
    with claiming_child(service.journal.path, item.record_id) as child:
        assert await service.settle_claims() == 0, "its owner is alive: it may still be publishing"
        child.kill()
        wait_until(lambda: process_state(child.pid) == "Z", 10, "the child to become a zombie", 0.05)
        assert await service.settle_claims() == 1
    record = (await service.store.get([item.record_id]))[item.record_id]
    assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)
    assert service.journal.unsettled() == []


def failed_runs() -> float:
    return REGISTRY.get_sample_value("taskmanager_replenish_runs_total", {"outcome": "failed"}) or 0


@pytest.mark.parametrize("error", [RuntimeError("a bug"), OSError(errno.EIO, "Input/output error")])
async def test_a_cycle_that_fails_for_any_reason_sends_the_red_card_and_counts(service, publisher, notifier, error):
    await service.ingest_tasks([{"n": 1}])
    publisher.error = error
    before = failed_runs()
    report = await service.replenish()
    assert report.outcome == "failed" and report.error
    assert [(n.level, n.title) for n in notifier.notices] == [("error", "Replenish failed")]
    assert failed_runs() == before + 1


async def test_a_full_claim_journal_is_a_store_unavailable_and_a_failed_cycle(service, publisher, notifier):
    await service.ingest_tasks([{"n": n} for n in range(300)])  # their claims need more pages than the journal has
    service.settings.replenish_batch_size = 300
    journal = service.journal.db
    journal.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (pages,) = journal.execute("PRAGMA page_count").fetchone()
    journal.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    with pytest.raises(StoreUnavailable) as unavailable:
        await service.push_priority([{"n": n} for n in range(300)])
    assert unavailable.value.status_code == 503 and unavailable.value.headers["Retry-After"]
    assert json.dumps(unavailable.value.extra)  # plain JSON for the 503 body
    report = await service.replenish()
    assert report.outcome == "failed" and "full" in report.error
    assert [n.level for n in notifier.notices] == ["error"] and publisher.sent == []
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}


async def test_a_cycle_that_cannot_take_its_lock_file_is_a_failed_cycle_with_its_card(service, notifier):
    await service.ingest_tasks([{"n": 1}])
    (service.settings.data_dir / "replenish.lock").mkdir(parents=True)  # a real OSError (EISDIR) on opening it
    before = failed_runs()
    report = await service.replenish()
    assert (report.outcome, report.error_code) == ("failed", "store_unavailable") and "replenish.lock" in report.error
    assert [n.title for n in notifier.notices] == ["Replenish failed"] and failed_runs() == before + 1


async def test_a_second_cycle_in_the_same_process_is_refused_and_leaves_the_first_ones_lock(service):
    assert service._cycle.acquire()  # this process is mid-cycle
    with pytest.raises(Conflict):
        await service.replenish()
    assert service._cycle.held
    service._cycle.release()


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
