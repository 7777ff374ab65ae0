"""The replenish cycle, on both stores, with a fake publisher, a recording bot and a hand-moved clock."""

import errno
import logging
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from app.cycle_history import CycleHistory
from app.errors import BrokerUnavailable, Conflict, QueueMissing
from app.locks import FileLock
from app.models import StatusChange, TaskStatus
from app.paths import DataDir
from app.service import TaskService


async def statuses(service: TaskService) -> dict[str, TaskStatus]:
    page = await service.store.page(None, 500, None)
    return {r.payload["n"]: r.status for r in page.items}


async def test_replenish_claims_highest_priority_then_oldest_and_publishes_them(service, cycle, publisher, clock):
    await service.ingest_tasks([{"n": n} for n in range(5)])
    await service.ingest_tasks([{"n": 10}], priority=1)
    await service.ingest_tasks([{"n": 11}], priority=9)
    service.settings.replenish_batch_size = 4
    report = await cycle.run()
    assert (report.outcome, report.published, report.failed, report.pending_left) == ("published", 4, 0, 3)
    assert [m.payload["n"] for m, _ in publisher.sent][:2] == [11, 10]
    assert [m.payload["n"] for m, _ in publisher.sent] == [11, 10, 0, 1]
    assert {priority for _, priority in publisher.sent} == {service.settings.priorities[0]}
    claimed = await service.store.get([m.record_id for m, _ in publisher.sent])
    assert all(
        r.status is TaskStatus.PROCESSING and r.attempts == 1 and r.claimed_at == clock.now for r in claimed.values()
    )
    assert report.depth_before == 0 and report.depth_after == 4


async def test_a_full_queue_means_nothing_to_do(make_services, publisher, notifier):
    services = make_services(replenish_threshold=3)
    service, cycle = services.tasks, services.cycle
    await service.ingest_tasks([{"n": 1}])
    publisher.depth = 3
    report = await cycle.run()
    assert (report.outcome, report.published) == ("skipped", 0)
    assert publisher.sent == [] and notifier.notices == []


async def test_dry_run_reports_and_changes_nothing(service, cycle, publisher, notifier):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    report = await cycle.run(dry_run=True)
    assert (report.outcome, report.claimed, report.published) == ("dry_run", 3, 0)
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}
    assert publisher.sent == [] and notifier.notices == []


async def test_tasks_that_fail_to_publish_go_back_to_pending_with_their_attempts(service, journal, cycle, publisher):
    stored = (await service.ingest_tasks([{"n": n} for n in range(4)])).items
    publisher.fail_ids = {stored[1].record_id, stored[3].record_id}
    report = await cycle.run()
    assert (report.published, report.failed) == (2, 2)
    records = await service.store.get([item.record_id for item in stored])
    assert [records[i.record_id].status for i in stored] == [TaskStatus.PROCESSING, TaskStatus.PENDING] * 2
    assert [records[i.record_id].attempts for i in stored] == [1, 0, 1, 0]
    assert journal.unsettled() == []


@pytest.mark.parametrize("error", [QueueMissing("queue 'q' does not exist"), BrokerUnavailable("down")])
async def test_a_missing_queue_or_broker_publishes_nothing_and_says_so(service, cycle, publisher, notifier, error):
    await service.ingest_tasks([{"n": n} for n in range(3)])
    publisher.error = error
    report = await cycle.run()
    assert report.outcome == "failed" and error.detail in report.error
    assert set((await statuses(service)).values()) == {TaskStatus.PENDING}
    assert [n.level for n in notifier.notices] == ["error"]


async def test_the_bot_hears_about_each_cycle_with_the_right_colour(make_services, publisher, notifier):
    services = make_services(replenish_batch_size=2)
    service, cycle = services.tasks, services.cycle
    await service.ingest_tasks([{"n": n} for n in range(5)])
    await cycle.run()  # a full batch, 3 left ≥ batch of 2: fine
    await cycle.run()  # a full batch, 1 left: low
    await cycle.run()  # the last one: the pool held less than a batch, all of it went out
    await cycle.run()  # nothing to publish while the queue is low: exhausted
    assert [(n.level, n.title) for n in notifier.notices] == [
        ("ok", "Queue replenished"),
        ("warning", "Task pool running low"),
        ("ok", "Queue replenished"),
        ("warning", "Task pool exhausted"),
    ]
    assert any("PENDING left in the pool**: 1" in line for line in notifier.notices[1].lines)


async def test_a_small_cycle_is_good_news_not_a_warning(service, cycle, notifier, caplog):
    caplog.set_level(logging.INFO)
    await service.ingest_tasks([{"n": n} for n in range(3)])  # fewer than one batch (10)
    report = await cycle.run()
    assert (report.outcome, report.published, report.pending_left) == ("published", 3, 0)
    assert [(n.level, n.title) for n in notifier.notices] == [("ok", "Queue replenished")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("error", [QueueMissing("queue 'q' does not exist"), BrokerUnavailable("down")])
async def test_a_failed_cycle_is_logged_as_an_error_and_its_card_shows_no_none(
    service, cycle, publisher, notifier, caplog, error
):
    caplog.set_level(logging.INFO)
    await service.ingest_tasks([{"n": 1}])
    publisher.error = error
    report = await cycle.run()
    assert report.outcome == "failed" and report.depth_before is None
    [card] = notifier.notices
    assert "None" not in "\n".join(card.lines), card.lines
    assert any("unknown" in line and "`celery`" in line for line in card.lines), card.lines
    [logged] = [r for r in caplog.records if r.getMessage().startswith("replenish:")]
    assert logged.levelno == logging.ERROR and error.detail in logged.getMessage()


async def test_lease_recovery_requeues_expired_claims_fails_spent_ones_and_leaves_live_ones(make_services, clock):
    services = make_services(lease_timeout_hours=24, max_attempts=3)
    service, cycle = services.tasks, services.cycle
    items = (await service.ingest_tasks([{"n": n} for n in range(3)])).items
    expired, spent, live = (item.record_id for item in items)
    await service.store.update(
        [
            StatusChange(expired, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=25), attempts=1),
            StatusChange(spent, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=25), attempts=3),
            StatusChange(live, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(hours=23), attempts=1),
        ]
    )
    assert await cycle.recover_leases() == (1, 1)
    records = await service.store.get([expired, spent, live])
    assert [records[r].status for r in (expired, spent, live)] == [
        TaskStatus.PENDING,
        TaskStatus.FAILED,
        TaskStatus.PROCESSING,
    ]
    clock.advance(hours=1, seconds=1)
    assert await cycle.recover_leases() == (1, 0)


async def test_lease_recovery_compares_exact_times_within_the_same_day(make_services, clock):
    services = make_services(lease_timeout_hours=1)
    service, cycle = services.tasks, services.cycle
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update(
        [StatusChange(item.record_id, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(minutes=59), attempts=1)]
    )
    assert await cycle.recover_leases() == (0, 0)
    clock.advance(minutes=2)
    assert await cycle.recover_leases() == (1, 0)


async def test_lease_recovery_is_off_at_zero(make_services, clock):
    services = make_services(lease_timeout_hours=0)
    service, cycle = services.tasks, services.cycle
    (item,) = (await service.ingest_tasks([{"n": 1}])).items
    await service.store.update(
        [StatusChange(item.record_id, TaskStatus.PROCESSING, claimed_at=clock.now - timedelta(days=9), attempts=1)]
    )
    assert await cycle.recover_leases() == (0, 0)


async def test_one_cycle_at_a_time(service, cycle):
    lock = FileLock(service.settings.data_dir / "replenish.lock")
    assert lock.acquire()  # another process is mid-cycle
    with pytest.raises(Conflict):
        await cycle.run()
    lock.release()
    assert (await cycle.run()).outcome == "nothing_pending"


async def test_the_history_keeps_every_real_cycle_and_no_dry_run_nor_refused_one(service, cycle):
    history = CycleHistory(service.settings.data_dir)
    await service.ingest_tasks([{"n": 1}])
    first = await cycle.run()
    await cycle.run(dry_run=True)
    lock = FileLock(DataDir(service.settings.data_dir).replenish_lock)
    assert lock.acquire()
    with pytest.raises(Conflict):
        await cycle.run()
    lock.release()
    second = await cycle.run()
    assert history.recent() == [second, first]
    assert (first.outcome, second.outcome) == ("published", "nothing_pending")


def failed_runs() -> float:
    return REGISTRY.get_sample_value("taskmanager_replenish_runs_total", {"outcome": "failed"}) or 0


@pytest.mark.parametrize("error", [RuntimeError("a bug"), OSError(errno.EIO, "Input/output error")])
async def test_a_cycle_that_fails_for_any_reason_sends_the_red_card_and_counts(
    service, cycle, publisher, notifier, error
):
    await service.ingest_tasks([{"n": 1}])
    publisher.error = error
    before = failed_runs()
    report = await cycle.run()
    assert report.outcome == "failed" and report.error
    assert [(n.level, n.title) for n in notifier.notices] == [("error", "Replenish failed")]
    assert failed_runs() == before + 1


async def test_a_cycle_that_cannot_take_its_lock_file_is_a_failed_cycle_with_its_card(service, cycle, notifier):
    await service.ingest_tasks([{"n": 1}])
    (service.settings.data_dir / "replenish.lock").mkdir(parents=True)  # a real OSError (EISDIR) on opening it
    before = failed_runs()
    report = await cycle.run()
    assert (report.outcome, report.error_code) == ("failed", "store_unavailable") and "replenish.lock" in report.error
    assert [n.title for n in notifier.notices] == ["Replenish failed"] and failed_runs() == before + 1


async def test_a_second_cycle_in_the_same_process_is_refused_and_leaves_the_first_ones_lock(service, cycle):
    lock = FileLock(service.settings.data_dir / "replenish.lock")
    assert lock.acquire()  # this process is mid-cycle
    with pytest.raises(Conflict):
        await cycle.run()
    assert lock.held and not FileLock(lock.path).acquire()  # still in force
    lock.release()
