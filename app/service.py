"""The pool's rules: ingest, the priority push, status updates, reads, retry, cancel, prune and stats."""

import asyncio
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from app.broker import Publisher
from app.config import Settings
from app.cycle_history import CycleHistory
from app.dispatch import Dispatcher, PriorityClass
from app.errors import Conflict, InvalidInput, NotFound, ServiceError, StoreUnavailable, TooManyTasks
from app.identity import MAX_PAYLOAD_CHARS, canonical_json, task_identifier
from app.metrics import (
    POOL_TASKS,
    QUEUE_DEPTH,
    REPORT_BACKLOG,
    REPORT_BACKLOG_AGE,
    REPORTS_REFUSED,
    STATUS_UPDATES,
    TASKS_INGESTED,
)
from app.models import (
    BULK_LIMIT,
    MAX_ERROR_CHARS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    NO_FILTER,
    Backlog,
    BulkOut,
    BulkStatusUpdate,
    ErrorOut,
    IngestResponse,
    ItemOutcome,
    NewTask,
    PartlyStored,
    PriorityResponse,
    ReportItem,
    StatsOut,
    StatusChange,
    Stored,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
    UpdateStatusResponse,
    utc_now,
)
from app.paths import READY_PROBE_PREFIX
from app.store.base import TaskStore
from app.store.sqlite_file import local_storage
from app.store.timestamps import from_ms, to_ms

_BULK_PAGE = 500
_INLINE_PAYLOADS = 100  # more than this many payloads are canonicalized and hashed on a thread
_CUT_MARK = "\n[… {:,} characters cut …]\n"


class TaskService:
    """The rules of the pool; the routes and the CLI come through here, the priority push through the dispatcher."""

    def __init__(
        self,
        store: TaskStore,
        settings: Settings,
        *,
        publisher: Publisher,
        dispatcher: Dispatcher,
        history: CycleHistory,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.store = store
        self.settings = settings
        self.publisher = publisher
        self._dispatcher = dispatcher
        self._history = history
        self.clock = clock

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

    async def ingest_tasks(
        self, payloads: Sequence[dict[str, Any]], priority: int | None = None
    ) -> IngestResponse | PartlyStored:
        tasks = await self._new_tasks_off_loop(payloads, priority)
        unique: dict[str, NewTask] = {}
        for task in tasks:
            unique.setdefault(task.identifier, task)  # the first payload of an identifier wins
        added = await self.store.add(list(unique.values()))
        if added.error is not None:
            return _partly_stored(added.error, tasks, added.stored)
        stored = {entry.identifier: entry for entry in added.stored}
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
        """Workers' reports, accepted durably; each record id once, under one status."""
        changes: list[StatusChange] = []
        owners: dict[str, str] = {}
        twice = set()
        now = self.clock()
        for status in update.model_fields_set:
            finished = now if status in (TaskStatus.SUCCESS, TaskStatus.FAILED) else None
            for index, entry in enumerate(getattr(update, status)):
                if isinstance(entry, ReportItem):
                    record_id, where = entry.record_id, f"{status} item {index} ({entry.record_id})"
                    result, error = _checked_result(entry.result, where), _checked_error(entry.error, where)
                else:
                    record_id, result, error = entry, None, None
                if record_id in owners:  # the first report of a record in a request wins
                    if owners[record_id] != status:
                        twice.add(record_id)
                    continue
                owners[record_id] = status
                changes.append(
                    StatusChange(record_id, TaskStatus(status), result=result, error=error, finished_at=finished)
                )
        if twice:
            raise InvalidInput(f"record ids listed under two statuses: {', '.join(sorted(twice))}")
        not_found = set(await self.store.report(changes)) if changes else set()
        updated = {status: 0 for status in update.model_fields_set}
        for change in changes:
            if change.record_id not in not_found:
                updated[change.status.value] += 1
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

    async def list_tasks(
        self, status: TaskStatus | None, limit: int, page_token: str | None, where: TaskFilter = NO_FILTER
    ) -> TaskPage:
        return await self.store.page(status, limit, page_token, where)

    # ---- filters, search and bulk actions -----------------------------------------------------------------

    @staticmethod
    def task_filter(
        *,
        priority: float | None = None,
        priority_min: float | None = None,
        priority_max: float | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        identifier: str | None = None,
    ) -> TaskFilter:
        """A filter checked for bounds that can match nothing, its moments cut to the stores' milliseconds."""
        for name, value in (("priority", priority), ("priority_min", priority_min), ("priority_max", priority_max)):
            if value is not None and not math.isfinite(value):
                raise InvalidInput(f"{name} must be a finite number")
        if priority_min is not None and priority_max is not None and priority_min > priority_max:
            raise InvalidInput(f"priority_min ({priority_min:g}) is above priority_max ({priority_max:g})")
        for name, moment in (("created_after", created_after), ("created_before", created_before)):
            if moment is not None and moment.utcoffset() is None:
                raise InvalidInput(f"{name} needs a time zone (Z or an offset such as +08:00)")
        after = from_ms(to_ms(created_after)) if created_after else None
        before = from_ms(to_ms(created_before)) if created_before else None
        if after is not None and before is not None and after >= before:
            raise InvalidInput("created_after must be earlier than created_before")
        return TaskFilter(priority, priority_min, priority_max, after, before, identifier)

    async def find_task(self, payload: dict[str, Any]) -> TaskRecord:
        """The task of a payload: its identifier is computed here, as ingest computes it."""
        identifier = self.new_task(payload).identifier
        page = await self.store.page(None, 1, None, TaskFilter(identifier=identifier))
        if not page.items:
            raise NotFound(f"no task with that payload (identifier {identifier})")
        return page.items[0]

    async def retry_failed(self, where: TaskFilter, *, dry_run: bool = False) -> BulkOut:
        """Every FAILED task the filter matches back to PENDING with a fresh attempt count, as `retry_task` does."""
        return await self._bulk(TaskStatus.FAILED, where, TaskStatus.PENDING, dry_run, attempts=0)

    async def cancel_pending(self, where: TaskFilter, *, dry_run: bool = False) -> BulkOut:
        async with self._dispatcher.claiming:  # no cycle of this process claims a task while it is being cancelled
            return await self._bulk(TaskStatus.PENDING, where, TaskStatus.CANCELLED, dry_run)

    async def _bulk(
        self, status: TaskStatus, where: TaskFilter, to: TaskStatus, dry_run: bool, attempts: int | None = None
    ) -> BulkOut:
        """Up to BULK_LIMIT matching tasks, oldest first, written in the store's batches (Bitable: 1,000 a call)."""
        record_ids, more = await self._matching(status, where)
        if dry_run or not record_ids:
            return BulkOut(matched=len(record_ids), changed=0, dry_run=dry_run, more=more)
        gone = await self.store.update([StatusChange(r, to, attempts=attempts) for r in record_ids])
        return BulkOut(matched=len(record_ids), changed=len(record_ids) - len(gone), dry_run=False, more=more)

    async def _matching(self, status: TaskStatus, where: TaskFilter) -> tuple[list[str], bool]:
        """The record ids of the first BULK_LIMIT matching tasks, and whether more match."""
        record_ids: list[str] = []
        token = None
        while len(record_ids) <= BULK_LIMIT:
            page = await self.store.page(status, _BULK_PAGE, token, where)
            record_ids += [record.record_id for record in page.items]
            if not (token := page.next_page_token):
                break
        return record_ids[:BULK_LIMIT], len(record_ids) > BULK_LIMIT

    async def retry_task(self, record_id: str) -> TaskRecord:
        """An operator gives a finished-badly task another go, with a fresh attempt count."""
        return await self._move(record_id, {TaskStatus.FAILED, TaskStatus.CANCELLED}, TaskStatus.PENDING, attempts=0)

    async def cancel_task(self, record_id: str) -> TaskRecord:
        return await self._move(record_id, {TaskStatus.PENDING}, TaskStatus.CANCELLED)

    async def change_priority(self, record_id: str, priority: int) -> TaskRecord:
        """A PENDING task's new priority; the next cycle picks by it."""
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidInput(f"priority {priority} is out of range: {MIN_PRIORITY:,}..{MAX_PRIORITY:,}")
        # a cycle holds it from its pick to its claim: no pick by the old priority claims the task after this 200
        async with self._dispatcher.claiming:
            record = await self.store.set_priority(record_id, priority)
        if record is None:
            raise NotFound(f"no task with record id {record_id}")
        if record.status is not TaskStatus.PENDING:
            status = record.status or "in no status the service knows"
            raise Conflict(f"task {record_id} is {status}; only a PENDING task's priority can change")
        return record

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

    async def push_priority(
        self, payloads: Sequence[dict[str, Any]], force: bool = False
    ) -> PriorityResponse | PartlyStored:
        """Send urgent tasks straight to the queue at high priority, storing the new ones first."""
        tasks = await self._new_tasks_off_loop(payloads, None)
        unique: dict[str, NewTask] = {}
        for task in tasks:
            unique.setdefault(task.identifier, task)
        results: dict[str, tuple[str | None, str]] = {}
        async with self._dispatcher.claiming:
            added = await self.store.add(list(unique.values()))
            if added.error is not None:
                return _partly_stored(added.error, tasks, added.stored)
            stored = added.stored
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
                dispatched = await self._dispatcher.dispatch(to_send, PriorityClass.HIGH)
            except StoreUnavailable as exc:  # all stored: the same request again publishes what is still PENDING
                return _partly_stored(exc, tasks, stored)
        for record in dispatched.sent:
            results[record.identifier or ""] = (record.record_id, "published")
        for record in dispatched.unsent:
            results[record.identifier or ""] = (record.record_id, "deferred")
        items = [
            ItemOutcome(identifier=t.identifier, record_id=results[t.identifier][0], outcome=results[t.identifier][1])
            for t in tasks
        ]
        return PriorityResponse(received=len(tasks), published=len(dispatched.sent), items=items)

    async def check_data_dir(self) -> None:
        """DATA_DIR takes a new file's write through to the disk: the claim journal and the index need it."""
        await asyncio.to_thread(_probe_write, self.settings.data_dir)

    def report_backlog(self) -> Backlog | None:
        """The store's reports not yet written (None: it writes them at once), read locally; the gauges follow it."""
        backlog = self.store.backlog()
        REPORT_BACKLOG.set(backlog.depth if backlog else 0)
        REPORT_BACKLOG_AGE.set((backlog.oldest_age_seconds or 0) if backlog else 0)
        REPORTS_REFUSED.set(backlog.refused if backlog else 0)
        return backlog

    async def stats(self) -> StatsOut:
        counted = await self.store.counts()
        backlog = self.report_backlog()
        depth, queue_error = None, None
        try:
            depth = await self.publisher.queue_depth()
            QUEUE_DEPTH.set(depth)
        except ServiceError as exc:
            queue_error = ErrorOut(error=exc.error, detail=exc.detail)
        counts = counted.by_status
        for status, count in counts.items():
            POOL_TASKS.labels(status).set(count)
        cycles = self._history.recent()
        return StatsOut(
            counts=counts,
            counts_as_of=counted.as_of,
            backlog=backlog,
            queue=self.settings.celery_queue,
            queue_depth=depth,
            replenish_threshold=self.settings.replenish_threshold,
            queue_error=queue_error,
            last_replenish=cycles[0] if cycles else None,
            next_replenish=None,
            scheduler_owner=False,
            recent_cycles=cycles,
            recent_failures=counted.recent_failures,
            feishu=self.store.feishu_usage(),
        )


def _probe_write(directory: Path) -> None:
    # a new file each time: rewriting an old one could reuse its block on a disk that has no free one left
    with local_storage(f"writing to DATA_DIR ({directory})"):
        fd, name = tempfile.mkstemp(prefix=READY_PROBE_PREFIX, dir=directory)
        try:
            os.write(fd, b"ready\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)


def _checked_canonical(payload: dict[str, Any], index: int) -> str:
    return _canonical_within_limit(payload, f"item {index}", "payload")


def _checked_result(result: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    """A result is stored as canonical JSON, so it has a payload's limits."""
    if result is not None:
        _canonical_within_limit(result, where, "result")
    return result


def _canonical_within_limit(value: dict[str, Any], where: str, what: str) -> str:
    try:
        canonical = canonical_json(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {what} {exc.detail.removeprefix('payload ')}") from None
    if len(canonical) > MAX_PAYLOAD_CHARS:
        raise InvalidInput(
            f"{where}: {what} is {len(canonical):,} characters of canonical JSON; the limit is {MAX_PAYLOAD_CHARS:,}"
        )
    return canonical


def _checked_error(error: str | None, where: str) -> str | None:
    """Error text as stored: none when empty; past MAX_ERROR_CHARS cut, not refused (the status matters more).

    The cut keeps the start (what the worker said) and the end (a traceback's last line names the exception).
    """
    if not error:
        return None
    try:
        error.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: error is not representable as UTF-8 (a lone surrogate)") from None
    if len(error) <= MAX_ERROR_CHARS:
        return error
    room = MAX_ERROR_CHARS - len(_CUT_MARK.format(len(error)))  # the mark is longest when it counts every character
    head = room // 2
    return error[:head] + _CUT_MARK.format(len(error) - room) + error[len(error) - (room - head) :]


def _priority_note(priority: int | None, stored: Iterable[Stored]) -> str | None:
    """Dedup wins over ?priority: a task already in the pool keeps its own, and the answer says so."""
    kept = sum(not entry.created for entry in stored)
    if priority is None or not kept:
        return None
    tasks = "duplicate keeps its" if kept == 1 else "duplicates keep their"
    return f"priority {priority} applies to new tasks only: {kept} {tasks} own priority"


def _partly_stored(error: StoreUnavailable, tasks: Sequence[NewTask], landed: Iterable[Stored]) -> PartlyStored:
    """What landed, per payload: the store stopped the request part way."""
    by_identifier = {entry.identifier: entry for entry in landed}
    distinct = len({task.identifier for task in tasks})
    return PartlyStored(error, _items(tasks, by_identifier), stored=len(by_identifier), distinct=distinct)


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
