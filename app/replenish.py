"""The replenish cycle: settle, pick, claim, publish, put back, report, notify; the timer, API and CLI run it."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from app.broker import Publisher
from app.config import Settings
from app.cycle_history import CycleHistory
from app.dispatch import Dispatched, Dispatcher, PriorityClass
from app.errors import Conflict, ServiceError
from app.locks import FileLock
from app.metrics import QUEUE_DEPTH, REPLENISH_RUNS
from app.models import ReplenishReport, StatusChange, TaskStatus, utc_now
from app.notify import Notice, Notifier
from app.paths import DataDir
from app.store.base import TaskStore
from app.store.sqlite_file import local_storage

log = logging.getLogger(__name__)


class ReplenishCycle:
    """One cycle at a time across processes: tops the queue up from the pool and tells the log, metrics and bot."""

    def __init__(
        self,
        store: TaskStore,
        publisher: Publisher,
        notifier: Notifier,
        dispatcher: Dispatcher,
        settings: Settings,
        history: CycleHistory,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._history = history
        self._publisher = publisher
        self._notifier = notifier
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock
        self._lock = FileLock(DataDir(settings.data_dir).replenish_lock)  # one cycle at a time across processes

    async def run(self, dry_run: bool = False) -> ReplenishReport:
        """One cycle: settle, recover leases, and top the queue up from the pool when it runs low.

        Raises Conflict while another cycle runs; any other failure is a `failed` report, told like the rest.
        """
        report = ReplenishReport(
            outcome="skipped", dry_run=dry_run, started_at=self._clock(), threshold=self._settings.replenish_threshold
        )
        locked = False
        try:
            try:
                with local_storage(f"taking {self._lock.path}"):  # a DATA_DIR gone read-only fails here first
                    locked = self._lock.acquire()
                if not locked:
                    raise Conflict("a replenish cycle is already running")
                if not dry_run:
                    await self._dispatcher.settle_claims()
                await self._top_up(report, dry_run)
            except Conflict:
                raise
            except ServiceError as exc:
                _failed(report, exc.detail, exc.error)
            except Exception as exc:  # a bug or an untranslated failure: the cycle still reports, counts and tells
                log.exception("replenish cycle failed")
                _failed(report, f"{type(exc).__name__}: {exc}", "internal_error")
            report.finished_at = self._clock()
            if not dry_run:
                self._history.add(report)  # before the lock is released: one process adds at a time
        finally:
            if locked:
                self._lock.release()
        self._record(report)
        if not dry_run:
            notice = replenish_notice(report, self._settings)
            if notice is not None:
                await self._notifier.send(notice)
        return report

    async def _top_up(self, report: ReplenishReport, dry_run: bool) -> None:
        """Read the depth, the candidates and (for real) recover leases side by side; then decide and dispatch."""
        threshold = self._settings.replenish_threshold
        async with self._dispatcher.claiming:
            # the reads touch different rows (PROCESSING, PENDING) and the broker: one round trip
            reads: list[Awaitable[Any]] = [
                self._publisher.queue_depth(),
                self._store.pending(self._settings.replenish_batch_size),
            ]
            if not dry_run:
                reads.append(self._recover_leases())
            depth, candidates, *leases = await _gather_all(*reads)
            report.depth_before = depth
            report.lease_requeued, report.lease_failed = leases[0] if leases else (0, 0)
            if dry_run:
                report.outcome = "dry_run"
                report.claimed = len(candidates) if depth < threshold else 0
            elif depth >= threshold:
                report.outcome = "skipped"
            elif not candidates:
                report.outcome = "nothing_pending"
            else:
                claimed = await self._dispatcher.claim(candidates)
                # counted while the messages go out: after the claim, before any put-back
                published, left = await asyncio.gather(
                    self._dispatcher.publish(claimed, PriorityClass.DEFAULT), self._pending()
                )
                _dispatched(report, len(candidates), await self._dispatcher.put_back(published), left)
        if depth < threshold:
            report.depth_after = await self._publisher.queue_depth()
        if report.pending_left is None:
            report.pending_left = await self._pending()

    async def recover_leases(self) -> tuple[int, int]:
        """PROCESSING past the lease goes back to PENDING, or to FAILED once it has used its attempts."""
        async with self._dispatcher.claiming:
            return await self._recover_leases()

    async def _recover_leases(self) -> tuple[int, int]:
        hours = self._settings.lease_timeout_hours
        if not hours or not self._store.supports_leases:
            return 0, 0
        cutoff = self._clock() - timedelta(hours=hours)
        stale = [r for r in await self._store.processing(cutoff) if r.claimed_at is not None and r.claimed_at < cutoff]
        spent = self._settings.max_attempts
        # only while still PROCESSING: a report accepted since the read, or not yet written to the table, wins
        changes = [
            StatusChange(
                r.record_id,
                TaskStatus.FAILED if r.attempts >= spent else TaskStatus.PENDING,
                if_still=TaskStatus.PROCESSING,
            )
            for r in stale
        ]
        if not changes:
            return 0, 0
        skipped = set(await self._store.update(changes))
        moved = [c for c in changes if c.record_id not in skipped]
        failed = sum(c.status is TaskStatus.FAILED for c in moved)
        if moved:
            log.warning("lease recovery: %d back to PENDING, %d FAILED", len(moved) - failed, failed)
        return len(moved) - failed, failed

    async def _pending(self) -> int | None:
        """The PENDING left; a count that fails must not stop the unsent from being put back."""
        try:
            return (await self._store.page(TaskStatus.PENDING, 1, None)).total
        except ServiceError as exc:
            log.warning("replenish: could not count the PENDING tasks left: %s", exc.detail)
            return None

    def _record(self, report: ReplenishReport) -> None:
        """The log line and the metrics, for every cycle, dry runs too."""
        log.log(
            logging.ERROR if report.outcome == "failed" else logging.INFO,
            "replenish: %s",
            report.model_dump_json(exclude_none=True),
        )
        REPLENISH_RUNS.labels(report.outcome).inc()
        depth = report.depth_after if report.depth_after is not None else report.depth_before
        if depth is not None:
            QUEUE_DEPTH.set(depth)


def _dispatched(report: ReplenishReport, claimed: int, dispatched: Dispatched, left: int | None) -> None:
    error = dispatched.error
    report.outcome = "failed" if error else "published"
    report.claimed, report.published, report.failed = claimed, len(dispatched.sent), len(dispatched.unsent)
    report.error = error.detail if error else None
    report.error_code = error.error if error else None
    report.pending_left = None if left is None else left + len(dispatched.unsent)  # counted before the put-back


def _failed(report: ReplenishReport, detail: str, code: str) -> None:
    report.outcome = "failed"
    report.error = f"{report.error}; {detail}" if report.error else detail
    report.error_code = report.error_code or code


def replenish_notice(report: ReplenishReport, settings: Settings) -> Notice | None:
    """The bot's card for a cycle: quiet when the queue was full, loud when the pool runs dry or a part is down."""
    if report.outcome in ("skipped", "dry_run", "busy"):
        return None
    lines = [
        f"**Queue** `{settings.celery_queue}`: {_known(report.depth_before)} → {_known(report.depth_after)} "
        "ready messages",
        f"**Published**: {report.published}   **Failed**: {report.failed}",
        f"**PENDING left in the pool**: {_known(report.pending_left)}",
    ]
    if report.lease_requeued or report.lease_failed:
        lines.append(f"**Lease recovery**: {report.lease_requeued} back to PENDING, {report.lease_failed} FAILED")
    if report.outcome == "failed":
        return Notice("error", "Replenish failed", [f"**Error**: {report.error}", *lines])
    if report.outcome == "nothing_pending":
        return Notice(
            "warning", "Task pool exhausted", ["The pool has no PENDING task left while the queue is low.", *lines]
        )
    # a pool that filled a whole batch and cannot fill the next one is running dry; a smaller one just emptied
    full_batch = report.claimed >= settings.replenish_batch_size
    if full_batch and report.pending_left is not None and report.pending_left < settings.replenish_batch_size:
        return Notice("warning", "Task pool running low", lines)
    return Notice("ok", "Queue replenished", lines)


def _known(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


async def _gather_all(*steps: Awaitable[Any]) -> list[Any]:
    """Like gather, but every step finishes before the first error is raised: none is left running."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
