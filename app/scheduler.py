"""APScheduler wiring only: each job is one call, into the replenish cycle (like the CLI and the API) or the alarm."""

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from app.backlog_alert import BacklogAlert
from app.config import Settings
from app.errors import Conflict
from app.locks import FileLock
from app.paths import DataDir
from app.replenish import ReplenishCycle

log = logging.getLogger(__name__)
JOB_ID = "replenish"
BACKLOG_JOB_ID = "report-backlog"
BACKLOG_LOOK_SECONDS = 60


class ReplenishScheduler:
    """Runs the replenish cycle every REPLENISH_INTERVAL_HOURS, and the backlog alarm's look each minute, in the one
    process that owns DATA_DIR's lock."""

    def __init__(self, cycle: ReplenishCycle, settings: Settings, backlog_alert: BacklogAlert | None = None):
        self._cycle = cycle
        self._backlog_alert = backlog_alert
        self._settings = settings
        self._owner = FileLock(DataDir(settings.data_dir).scheduler_lock)
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> bool:
        """Start when enabled and no other process on this DATA_DIR runs one; answer whether it started."""
        if not self._settings.scheduler_enabled:
            log.info("scheduler disabled (SCHEDULER_ENABLED=false)")
            return False
        if not self._owner.acquire():
            log.warning("another process owns the scheduler of %s; not starting one", self._settings.data_dir)
            return False
        interval = IntervalTrigger(hours=self._settings.replenish_interval_hours)
        # None would add the job paused: leave next_run_time out unless the first run is now
        first_run = {"next_run_time": datetime.now(UTC)} if self._settings.replenish_on_startup else {}
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._tick,
            interval,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(min(3600, interval.interval.total_seconds() / 2)),  # a late run still counts
            **first_run,
        )
        if self._backlog_alert is not None:
            scheduler.add_job(
                self._backlog_alert.look,
                IntervalTrigger(seconds=BACKLOG_LOOK_SECONDS),
                id=BACKLOG_JOB_ID,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),  # a backlog already late at start is told at once
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info("replenish scheduler started: every %s h", self._settings.replenish_interval_hours)
        return True

    async def _tick(self) -> None:
        try:
            await self._cycle.run()
        except Conflict:
            log.info("replenish skipped: another cycle is running")

    @property
    def owner(self) -> bool:
        return self._scheduler is not None

    def next_run_time(self) -> datetime | None:
        job = self._scheduler.get_job(JOB_ID) if self._scheduler else None
        return job.next_run_time if job else None

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._owner.release()
