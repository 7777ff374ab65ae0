from collections.abc import Sequence
from typing import Any

from app.config import Settings
from app.errors import Conflict, InvalidInput, NotFound, StoreUnavailable, TooManyTasks
from app.identity import MAX_PAYLOAD_CHARS, canonical_json, task_identifier
from app.models import (
    BulkStatusUpdate,
    IngestResponse,
    ItemOutcome,
    NewTask,
    StatusChange,
    Stored,
    TaskPage,
    TaskRecord,
    TaskStatus,
    UpdateStatusResponse,
)
from app.store.base import TaskStore


class TaskService:
    """The rules of the pool. Routes, the CLI and the scheduler all come through here."""

    def __init__(self, store: TaskStore, settings: Settings):
        self.store = store
        self.settings = settings

    def new_task(self, payload: dict[str, Any], priority: int | None = None, *, index: int = 0) -> NewTask:
        canonical = _checked_canonical(payload, index)
        try:
            identifier = task_identifier(payload, self.settings.dedup_keys)
        except InvalidInput as exc:
            raise InvalidInput(f"item {index}: {exc.detail}") from None
        return NewTask(identifier=identifier, payload=payload, canonical=canonical, priority=priority)

    def new_tasks(self, payloads: Sequence[dict[str, Any]], priority: int | None = None) -> list[NewTask]:
        limit = self.settings.max_tasks_per_request
        if len(payloads) > limit:
            raise TooManyTasks(f"{len(payloads)} tasks in one request; MAX_TASKS_PER_REQUEST is {limit}")
        return [self.new_task(payload, priority, index=i) for i, payload in enumerate(payloads)]

    async def ingest_tasks(self, payloads: Sequence[dict[str, Any]], priority: int | None = None) -> IngestResponse:
        tasks = self.new_tasks(payloads, priority)
        unique: dict[str, NewTask] = {}
        for task in tasks:
            unique.setdefault(task.identifier, task)  # the first payload of an identifier wins
        try:
            stored = {entry.identifier: entry for entry in await self.store.add(list(unique.values()))}
        except StoreUnavailable as exc:
            landed = {entry.identifier: entry for entry in exc.extra.get("stored", [])}
            raise StoreUnavailable(
                f"{exc.detail}; {len(landed)} of {len(unique)} distinct tasks were stored, "
                "and sending the same request again is safe",
                retry_after=exc.retry_after,
                extra={"items": [_not_stored_or(landed, task.identifier) for task in tasks]},
            ) from exc
        items, first_seen = [], set()
        for task in tasks:
            entry = stored[task.identifier]
            created = entry.created and task.identifier not in first_seen
            first_seen.add(task.identifier)
            items.append(_outcome(entry, "created" if created else "duplicate"))
        created_count = sum(item.outcome == "created" for item in items)
        return IngestResponse(
            received=len(tasks), created=created_count, duplicates=len(tasks) - created_count, items=items
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
        return UpdateStatusResponse(
            updated={status: sum(rid not in not_found for rid in ids) for status, ids in given.items()},
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


def _outcome(entry: Stored, outcome: str) -> ItemOutcome:
    return ItemOutcome(identifier=entry.identifier, record_id=entry.record_id, outcome=outcome)


def _not_stored_or(landed: dict[str, Stored], identifier: str) -> dict[str, Any]:
    if identifier in landed:
        entry = landed[identifier]
        return {
            "identifier": identifier,
            "record_id": entry.record_id,
            "outcome": "created" if entry.created else "duplicate",
        }
    return {"identifier": identifier, "record_id": None, "outcome": "not_stored"}
