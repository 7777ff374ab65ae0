"""The timer: one job per interval, a first run at start when asked, one scheduler per DATA_DIR; the backlog alarm."""

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from app.backlog_alert import BacklogAlert
from app.errors import Conflict
from app.models import Backlog
from app.notify import Notice
from app.scheduler import BACKLOG_JOB_ID, BACKLOG_LOOK_SECONDS, JOB_ID, ReplenishScheduler
from tests.support.fakes import RecordingNotifier
from tests.support.processes import service_process
from tests.support.settings import make_settings


class CountingCycle:
    """Stands in for ReplenishCycle: the scheduler only ever calls run()."""

    def __init__(self, busy: bool = False):
        self.calls = 0
        self.busy = busy
        self.called = asyncio.Event()

    async def run(self):
        self.calls += 1
        self.called.set()
        if self.busy:
            raise Conflict("a replenish cycle is already running")


async def test_the_job_runs_every_interval_one_at_a_time_with_a_long_misfire_grace(tmp_path):
    scheduler = ReplenishScheduler(CountingCycle(), make_settings(tmp_path))
    assert scheduler.start() and scheduler.owner
    job = scheduler._scheduler.get_job(JOB_ID)
    assert job.trigger.interval == timedelta(hours=4)
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 3600)
    expected = datetime.now(UTC) + timedelta(hours=4)
    assert abs((scheduler.next_run_time() - expected).total_seconds()) < 60
    scheduler.shutdown()


async def test_replenish_on_startup_runs_a_cycle_at_once(tmp_path):
    cycle = CountingCycle(busy=True)  # a busy cycle is logged, not raised
    scheduler = ReplenishScheduler(cycle, make_settings(tmp_path, replenish_on_startup=True))
    scheduler.start()
    await asyncio.wait_for(cycle.called.wait(), timeout=10)
    assert cycle.calls == 1
    scheduler.shutdown()


async def test_scheduler_enabled_false_starts_nothing(tmp_path):
    scheduler = ReplenishScheduler(CountingCycle(), make_settings(tmp_path, scheduler_enabled=False))
    assert not scheduler.start()
    assert (scheduler.owner, scheduler.next_run_time()) == (False, None)


async def test_only_one_scheduler_per_data_dir(tmp_path):
    first = ReplenishScheduler(CountingCycle(), make_settings(tmp_path))
    second = ReplenishScheduler(CountingCycle(), make_settings(tmp_path))
    assert first.start()
    assert not second.start()
    first.shutdown()
    assert second.start()  # the lock is free again once the owner stops
    second.shutdown()


def test_two_service_processes_on_one_data_dir_run_one_scheduler(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data")}
    with service_process(env, tmp_path) as one, service_process(env, tmp_path) as two:
        owners = [httpx.get(f"{url}/api/stats", timeout=10).json()["scheduler_owner"] for url in (one, two)]
    assert sorted(owners) == [False, True]


async def test_the_backlog_alarm_looks_at_start_and_every_minute(tmp_path):
    notifier = ToldNotifier()
    alert = BacklogAlert(lambda: Backlog(depth=3, oldest_age_seconds=900.0), notifier, 600)
    scheduler = ReplenishScheduler(CountingCycle(), make_settings(tmp_path), alert)
    scheduler.start()
    try:
        await asyncio.wait_for(notifier.told.wait(), timeout=10)
        job = scheduler._scheduler.get_job(BACKLOG_JOB_ID)
        assert job.trigger.interval == timedelta(seconds=BACKLOG_LOOK_SECONDS) == timedelta(minutes=1)
        assert (job.max_instances, job.coalesce) == (1, True)
    finally:
        scheduler.shutdown()
    assert [n.level for n in notifier.notices] == ["warning"]


class ToldNotifier(RecordingNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.told = asyncio.Event()

    async def send(self, notice: Notice) -> bool:
        self.told.set()
        return await super().send(notice)
