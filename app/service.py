import asyncio
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from app.broker import Message, Publisher
from app.config import Settings
from app.errors import (
    BrokerUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    QueueMissing,
    ServiceError,
    StoreUnavailable,
    TooManyTasks,
)
from app.identity import MAX_PAYLOAD_CHARS, canonical_json, task_identifier
from app.locks import FileLock
from app.metrics import (
    MESSAGES_PUBLISHED,
    POOL_TASKS,
    QUEUE_DEPTH,
    REPLENISH_RUNS,
    STATUS_UPDATES,
    TASKS_INGESTED,
)
from app.models import (
    BulkStatusUpdate,
    ErrorOut,
    IngestResponse,
    ItemOutcome,
    NewTask,
    PriorityResponse,
    ReplenishReport,
    StatsOut,
    StatusChange,
    Stored,
    TaskPage,
    TaskRecord,
    TaskStatus,
    UpdateStatusResponse,
)
from app.notify import Notice, Notifier
from app.store.base import TaskStore
from app.store.journal import ClaimJournal
from app.store.records import local_storage

log = logging.getLogger(__name__)
T = TypeVar("T")
_INLINE_PAYLOADS = 100  # more than this many payloads are canonicalized and hashed on a thread


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskService:
    """The rules of the pool. Routes, the CLI and the scheduler all come through here."""

    def __init__(
        self,
        store: TaskStore,
        settings: Settings,
        *,
        publisher: Publisher,
        notifier: Notifier,
        journal: ClaimJournal,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.store = store
        self.settings = settings
        self.publisher = publisher
        self.notifier = notifier
        self.journal = journal
        self.clock = clock
        self._claiming = asyncio.Lock()  # one claim at a time in this process: no row is claimed twice
        self._cycle = FileLock(settings.data_dir / "replenish.lock")  # one cycle at a time across processes
        self._last_report_path = settings.data_dir / "last_replenish.json"

    def new_task(self, payload: dict[str, Any], priority: int | None = None, *, index: int = 0) -> NewTask:
        canonical = _checked_canonical(payload, index)
        try:
            identifier = task_identifier(payload, self.settings.dedup_keys, canonical)
        except InvalidInput as exc:
            raise InvalidInput(f"item {index}: {exc.detail}") from None
        return NewTask(identifier=identifier, payload=payload, canonical=canonical, priority=priority)

    def new_tasks(self, payloads: Sequence[dict[str, Any]], priority: int | None = None) -> list[NewTask]:
        limit = self.settings.max_tasks_per_request
        if len(payloads) > limit:
            raise TooManyTasks(f"{len(payloads)} tasks in one request; MAX_TASKS_PER_REQUEST is {limit}")
        return [self.new_task(payload, priority, index=i) for i, payload in enumerate(payloads)]

    async def _new_tasks_off_loop(self, payloads: Sequence[dict[str, Any]], priority: int | None) -> list[NewTask]:
        """Canonicalizing and hashing a big batch takes a while: a thread keeps the loop answering meanwhile."""
        if len(payloads) <= _INLINE_PAYLOADS:
            return self.new_tasks(payloads, priority)  # a thread hop costs more than a small batch
        return await asyncio.to_thread(self.new_tasks, payloads, priority)

    async def ingest_tasks(self, payloads: Sequence[dict[str, Any]], priority: int | None = None) -> IngestResponse:
        tasks = await self._new_tasks_off_loop(payloads, priority)
        unique: dict[str, NewTask] = {}
        for task in tasks:
            unique.setdefault(task.identifier, task)  # the first payload of an identifier wins
        try:
            stored = {entry.identifier: entry for entry in await self.store.add(list(unique.values()))}
        except StoreUnavailable as exc:
            raise _not_all_stored(exc, tasks, {entry.identifier: entry for entry in exc.stored}) from exc
        items = _items(tasks, stored)
        created_count = sum(item["outcome"] == "created" for item in items)
        TASKS_INGESTED.labels("created").inc(created_count)
        TASKS_INGESTED.labels("duplicate").inc(len(tasks) - created_count)
        # validated in one pass from plain dicts: a hundred ItemOutcome(...) calls cost more than the rest
        return IngestResponse.model_validate(
            {
                "received": len(tasks),
                "created": created_count,
                "duplicates": len(tasks) - created_count,
                "items": items,
                "note": _priority_note(priority, stored.values()),
            }
        )

    async def update_status(self, update: BulkStatusUpdate) -> UpdateStatusResponse:
        given = {name: list(dict.fromkeys(getattr(update, name))) for name in update.model_fields_set}
        owners: dict[str, str] = {}
        twice = set()
        for status, record_ids in given.items():
            for record_id in record_ids:
                if owners.setdefault(record_id, status) != status:
                    twice.add(record_id)
        if twice:
            raise InvalidInput(f"record ids listed under two statuses: {', '.join(sorted(twice))}")
        changes = [StatusChange(rid, TaskStatus(status)) for status, ids in given.items() for rid in ids]
        not_found = set(await self.store.update(changes)) if changes else set()
        updated = {status: sum(rid not in not_found for rid in ids) for status, ids in given.items()}
        for status, count in updated.items():
            STATUS_UPDATES.labels(status).inc(count)
        return UpdateStatusResponse(
            updated=updated,
            not_found=[change.record_id for change in changes if change.record_id in not_found],
        )

    async def get_task(self, record_id: str) -> TaskRecord:
        found = await self.store.get([record_id])
        if record_id not in found:
            raise NotFound(f"no task with record id {record_id}")
        return found[record_id]

    async def list_tasks(self, status: TaskStatus | None, limit: int, page_token: str | None) -> TaskPage:
        return await self.store.page(status, limit, page_token)

    async def retry_task(self, record_id: str) -> TaskRecord:
        """An operator gives a finished-badly task another go, with a fresh attempt count."""
        return await self._move(record_id, {TaskStatus.FAILED, TaskStatus.CANCELLED}, TaskStatus.PENDING, attempts=0)

    async def cancel_task(self, record_id: str) -> TaskRecord:
        return await self._move(record_id, {TaskStatus.PENDING}, TaskStatus.CANCELLED)

    async def _move(
        self, record_id: str, allowed: set[TaskStatus], to: TaskStatus, attempts: int | None = None
    ) -> TaskRecord:
        record = await self.get_task(record_id)
        if record.status not in allowed:
            names = " or ".join(sorted(allowed))
            raise Conflict(f"task {record_id} is {record.status}; only a {names} task can become {to}")
        if await self.store.update([StatusChange(record_id, to, attempts=attempts)]):
            raise NotFound(f"no task with record id {record_id}")
        record.status = to
        if attempts is not None:
            record.attempts = attempts
        return record

    async def prune(self, status: TaskStatus, older_than_days: float, *, dry_run: bool = False) -> int:
        """Delete finished tasks created more than that many days ago, keeping their identifiers for dedup;
        a dry run only counts them."""
        if status not in (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise InvalidInput(f"only finished tasks (SUCCESS, FAILED, CANCELLED) can be pruned, not {status}")
        if older_than_days < 0:
            raise InvalidInput("--older-than must be zero or more days")
        return await self.store.prune(status, self.clock() - timedelta(days=older_than_days), dry_run=dry_run)

    # ---- the queue side ---------------------------------------------------------------------------

    async def push_priority(self, payloads: Sequence[dict[str, Any]], force: bool = False) -> PriorityResponse:
        """Send urgent tasks straight to the queue at high priority, storing the new ones first."""
        tasks = await self._new_tasks_off_loop(payloads, None)
        unique: dict[str, NewTask] = {}
        for task in tasks:
            unique.setdefault(task.identifier, task)
        results: dict[str, tuple[str | None, str]] = {}
        async with self._claiming:
            try:
                stored = await self.store.add(list(unique.values()))
            except StoreUnavailable as exc:
                raise _not_all_stored(exc, tasks, {entry.identifier: entry for entry in exc.stored}) from exc
            try:
                existing = await self.store.get([s.record_id for s in stored if s.record_id and not s.created])
                to_send: list[TaskRecord] = []
                for entry in stored:
                    if entry.created:
                        task = unique[entry.identifier]
                        to_send.append(TaskRecord(entry.record_id, task.identifier, TaskStatus.PENDING, task.payload))
                        continue
                    record = existing.get(entry.record_id or "")
                    if record is None:  # pruned, or deleted from the table by hand: nothing left to send
                        results[entry.identifier] = (entry.record_id, "already_done")
                    elif record.status is TaskStatus.PENDING or force:
                        to_send.append(record)
                    else:
                        outcome = "already_queued" if record.status is TaskStatus.PROCESSING else "already_done"
                        results[entry.identifier] = (record.record_id, outcome)
                sent, unsent, _, _ = await self._dispatch(to_send, "high")
            except StoreUnavailable as exc:  # all stored: the same request again publishes what is still PENDING
                raise _not_all_stored(exc, tasks, {entry.identifier: entry for entry in stored}) from exc
        for record in sent:
            results[record.identifier or ""] = (record.record_id, "published")
        for record in unsent:
            results[record.identifier or ""] = (record.record_id, "deferred")
        items = [
            ItemOutcome(identifier=t.identifier, record_id=results[t.identifier][0], outcome=results[t.identifier][1])
            for t in tasks
        ]
        return PriorityResponse(received=len(tasks), published=len(sent), items=items)

    async def _dispatch(
        self, records: list[TaskRecord], priority_class: str, alongside: Callable[[], Awaitable[T]] | None = None
    ) -> tuple[list[TaskRecord], list[TaskRecord], ServiceError | None, T | None]:
        """Claim, publish, and put back what did not go out: a row is never PROCESSING without a message.

        `alongside` runs while the messages go out, after the claim and before any put-back.
        """
        if not records:
            return [], [], None, None
        now = self.clock()
        self.journal.begin([(r.record_id, r.attempts) for r in records])
        claims = [
            StatusChange(
                r.record_id,
                TaskStatus.PROCESSING,
                claimed_at=now,
                attempts=r.attempts + 1,
                identifier=None if r.identifier else self._identify(r.payload),
            )
            for r in records
        ]
        # a failure here leaves the journal entries: the next cycle settles whatever landed
        missing = set(await self.store.update(claims))
        self.journal.settle(missing)
        claimed = [r for r in records if r.record_id not in missing]
        priority = self.settings.priorities[0 if priority_class == "default" else 1]
        (failed, error), extra = await asyncio.gather(self._publish(claimed, priority), _maybe(alongside))
        sent = [r for r in claimed if r.record_id not in failed]
        unsent = [r for r in claimed if r.record_id in failed]
        MESSAGES_PUBLISHED.labels(priority_class, "sent").inc(len(sent))
        MESSAGES_PUBLISHED.labels(priority_class, "failed").inc(len(unsent))
        self.journal.mark_published(r.record_id for r in sent)
        if unsent:
            try:
                await self.store.update(
                    [StatusChange(r.record_id, TaskStatus.PENDING, attempts=r.attempts) for r in unsent]
                )
            except ServiceError as exc:  # the journal keeps the unsent ones: the next cycle puts them back
                self.journal.settle(r.record_id for r in sent)
                both = f"{error.detail}; putting the unsent back failed too: {exc.detail}" if error else exc.detail
                return sent, unsent, ServiceError(both), extra
        self.journal.settle(r.record_id for r in claimed)
        return sent, unsent, error, extra

    async def _publish(self, records: list[TaskRecord], priority: int) -> tuple[set[str], ServiceError | None]:
        try:
            return set(await self.publisher.publish([Message(r.record_id, r.payload) for r in records], priority)), None
        except (QueueMissing, BrokerUnavailable) as exc:
            return {r.record_id for r in records}, exc

    def _identify(self, payload: dict[str, Any]) -> str | None:
        try:
            return task_identifier(payload, self.settings.dedup_keys)
        except InvalidInput:
            return None

    async def settle_claims(self) -> int:
        """Undo claims a crash or an outage left between claim and publish; answer how many were put back."""
        async with self._claiming:
            claims = self.journal.settleable()
            if not claims:
                return 0
            unpublished = {c.record_id: c for c in claims if not c.published}
            current = await self.store.get(list(unpublished))
            back = [
                StatusChange(record_id, TaskStatus.PENDING, attempts=claim.attempts)
                for record_id, claim in unpublished.items()
                if record_id in current and current[record_id].status is TaskStatus.PROCESSING
            ]
            if back:
                await self.store.update(back)
            self.journal.settle(c.record_id for c in claims)
            if back:
                log.warning("put %d claimed-but-unpublished tasks back to PENDING", len(back))
            return len(back)

    async def recover_leases(self) -> tuple[int, int]:
        """PROCESSING past the lease goes back to PENDING, or to FAILED once it has used its attempts."""
        async with self._claiming:
            return await self._recover_leases()

    async def _recover_leases(self) -> tuple[int, int]:
        hours = self.settings.lease_timeout_hours
        if not hours or not self.store.supports_leases:
            return 0, 0
        cutoff = self.clock() - timedelta(hours=hours)
        stale = [r for r in await self.store.processing(cutoff) if r.claimed_at is not None and r.claimed_at < cutoff]
        changes = [
            StatusChange(
                r.record_id, TaskStatus.FAILED if r.attempts >= self.settings.max_attempts else TaskStatus.PENDING
            )
            for r in stale
        ]
        if changes:
            await self.store.update(changes)
        failed = sum(c.status is TaskStatus.FAILED for c in changes)
        if changes:
            log.warning("lease recovery: %d back to PENDING, %d FAILED", len(changes) - failed, failed)
        return len(changes) - failed, failed

    async def replenish(self, dry_run: bool = False) -> ReplenishReport:
        """One cycle: settle, recover leases, and top the queue up from the pool when it runs low."""
        settings = self.settings
        report = ReplenishReport(
            outcome="skipped", dry_run=dry_run, started_at=self.clock(), threshold=settings.replenish_threshold
        )
        locked = False
        try:
            with local_storage(f"taking {self._cycle.path}"):  # a DATA_DIR gone read-only fails here first
                locked = self._cycle.acquire()
            if not locked:
                raise Conflict("a replenish cycle is already running")
            if not dry_run:
                await self.settle_claims()
            async with self._claiming:
                # the three reads touch different rows (PROCESSING, PENDING) and the broker: one round trip
                depth, candidates, leases = await _all(
                    self.publisher.queue_depth(),
                    self.store.pending(settings.replenish_batch_size),
                    _maybe(None if dry_run else self._recover_leases),
                )
                report.depth_before = depth
                report.lease_requeued, report.lease_failed = leases or (0, 0)
                if dry_run:
                    report.outcome = "dry_run"
                    report.claimed = len(candidates) if depth < settings.replenish_threshold else 0
                elif depth >= settings.replenish_threshold:
                    report.outcome = "skipped"
                elif not candidates:
                    report.outcome = "nothing_pending"
                else:
                    sent, unsent, error, left = await self._dispatch(candidates, "default", alongside=self._pending)
                    report.outcome = "failed" if error else "published"
                    report.claimed, report.published, report.failed = len(candidates), len(sent), len(unsent)
                    report.error = error.detail if error else None
                    report.error_code = error.error if error else None
                    report.pending_left = None if left is None else left + len(unsent)  # counted before the put-back
            if depth < settings.replenish_threshold:
                report.depth_after = await self.publisher.queue_depth()
            if report.pending_left is None:
                report.pending_left = await self._pending()
        except Conflict:
            raise
        except ServiceError as exc:
            report.outcome = "failed"
            report.error = f"{report.error}; {exc.detail}" if report.error else exc.detail
            report.error_code = report.error_code or exc.error
        except Exception as exc:  # a bug or an untranslated failure: the cycle still reports, counts and tells the bot
            log.exception("replenish cycle failed")
            report.outcome = "failed"
            failure = f"{type(exc).__name__}: {exc}"
            report.error = f"{report.error}; {failure}" if report.error else failure
            report.error_code = report.error_code or "internal_error"
        finally:
            if locked:
                self._cycle.release()
        report.finished_at = self.clock()
        log.log(
            logging.ERROR if report.outcome == "failed" else logging.INFO,
            "replenish: %s",
            report.model_dump_json(exclude_none=True),
        )
        REPLENISH_RUNS.labels(report.outcome).inc()
        depth = report.depth_after if report.depth_after is not None else report.depth_before
        if depth is not None:
            QUEUE_DEPTH.set(depth)
        if not dry_run:
            try:
                self._last_report_path.write_text(report.model_dump_json())
            except OSError as exc:  # a full or read-only DATA_DIR: stats show an older report, the bot still hears
                log.error("could not keep the cycle's report in %s: %s", self._last_report_path, exc)
            notice = replenish_notice(report, settings)
            if notice is not None:
                await self.notifier.send(notice)
        return report

    async def check_data_dir(self) -> None:
        """DATA_DIR takes a new file's write through to the disk: the claim journal and the index need it."""
        await asyncio.to_thread(_probe_write, self.settings.data_dir)

    async def _pending(self) -> int | None:
        return (await self.store.page(TaskStatus.PENDING, 1, None)).total

    def last_report(self) -> ReplenishReport | None:
        try:
            return ReplenishReport.model_validate_json(self._last_report_path.read_text())
        except (OSError, ValueError):
            return None

    async def stats(self) -> StatsOut:
        totals = await asyncio.gather(*(self.store.page(status, 1, None) for status in TaskStatus))
        depth, queue_error = None, None
        try:
            depth = await self.publisher.queue_depth()
            QUEUE_DEPTH.set(depth)
        except ServiceError as exc:
            queue_error = ErrorOut(error=exc.error, detail=exc.detail)
        counts = {status.value: page.total or 0 for status, page in zip(TaskStatus, totals, strict=True)}
        for status, count in counts.items():
            POOL_TASKS.labels(status).set(count)
        return StatsOut(
            counts=counts,
            queue=self.settings.celery_queue,
            queue_depth=depth,
            queue_error=queue_error,
            last_replenish=self.last_report(),
            next_replenish=None,
            scheduler_owner=False,
        )


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


async def _maybe(work: Callable[[], Awaitable[T]] | None) -> T | None:
    return await work() if work is not None else None


async def _all(*steps: Awaitable[Any]) -> list[Any]:
    """Like gather, but every step finishes before the first error is raised: none is left running."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _probe_write(directory: Path) -> None:
    # a new file each time: rewriting an old one could reuse its block on a disk that has no free one left
    with local_storage(f"writing to DATA_DIR ({directory})"):
        fd, name = tempfile.mkstemp(prefix=".ready-", dir=directory)
        try:
            os.write(fd, b"ready\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)


def _checked_canonical(payload: dict[str, Any], index: int) -> str:
    try:
        canonical = canonical_json(payload)
    except InvalidInput as exc:
        raise InvalidInput(f"item {index}: {exc.detail}") from None
    if len(canonical) > MAX_PAYLOAD_CHARS:
        raise InvalidInput(
            f"item {index}: payload is {len(canonical):,} characters of canonical JSON; "
            f"the limit is {MAX_PAYLOAD_CHARS:,}"
        )
    return canonical


def _priority_note(priority: int | None, stored: Iterable[Stored]) -> str | None:
    """Dedup wins over ?priority: a task already in the pool keeps its own, and the answer says so."""
    kept = sum(not entry.created for entry in stored)
    if priority is None or not kept:
        return None
    tasks = "duplicate keeps its" if kept == 1 else "duplicates keep their"
    return f"priority {priority} applies to new tasks only: {kept} {tasks} own priority"


def _not_all_stored(exc: StoreUnavailable, tasks: Sequence[NewTask], landed: dict[str, Stored]) -> StoreUnavailable:
    """The one 503 a request that stores tasks answers: what landed, per payload, as plain JSON."""
    distinct = len({task.identifier for task in tasks})
    return StoreUnavailable(
        f"{exc.detail}; {len(landed)} of {distinct} distinct tasks were stored, "
        "and sending the same request again is safe",
        retry_after=exc.retry_after,
        extra={"items": _items(tasks, landed)},
    )


def _items(tasks: Sequence[NewTask], stored: dict[str, Stored]) -> list[dict[str, Any]]:
    """One outcome per payload, in order: only the first copy of a new task in a request is `created`."""
    items, seen = [], set()
    for task in tasks:
        entry = stored.get(task.identifier)
        if entry is None:
            items.append({"identifier": task.identifier, "record_id": None, "outcome": "not_stored"})
        else:
            created = entry.created and task.identifier not in seen
            outcome = "created" if created else "duplicate"
            items.append({"identifier": entry.identifier, "record_id": entry.record_id, "outcome": outcome})
        seen.add(task.identifier)
    return items
