"""The task routes: parse, call the service, shape the answer."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime
from starlette.convertors import StringConvertor, register_url_convertor

from app.api.deps import ServiceDep
from app.api.errors import stored_or_503
from app.api.security import require_api_key
from app.models import (
    RECORD_ID_PATTERN,
    BulkOut,
    BulkStatusUpdate,
    ErrorOut,
    IngestResponse,
    PriorityChange,
    PriorityResponse,
    TaskFilter,
    TaskOut,
    TaskPageOut,
    TaskStatus,
    UpdateStatusResponse,
)
from app.service import TaskService

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(require_api_key)])
ACTIONS = ("ingest", "priority-queue", "update-status", "find", "bulk")


class RecordIdConvertor(StringConvertor):
    """A path segment that is not one of the action routes: `GET /api/tasks/ingest` is a 405, not a missing task."""

    regex = rf"(?!(?:{'|'.join(ACTIONS)})(?:/|$))[^/]+"


register_url_convertor("record_id", RecordIdConvertor())

RecordId = Annotated[str, Path(pattern=RECORD_ID_PATTERN, description="The task's record id")]
Payloads = Annotated[list[dict[str, Any]], Body(description="Task payloads: a JSON list of objects")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 502, 503)
}


@router.post("/ingest", response_model=IngestResponse, responses=ERRORS)
async def ingest(
    service: ServiceDep,
    payloads: Payloads,
    priority: Annotated[int | None, Query(ge=-1_000_000, le=1_000_000)] = None,
) -> IngestResponse | JSONResponse:
    """Store new tasks as PENDING; payloads seen before are reported as duplicates."""
    return stored_or_503(await service.ingest_tasks(payloads, priority))


@router.post("/priority-queue", response_model=PriorityResponse, responses=ERRORS)
async def priority_queue(
    service: ServiceDep,
    payloads: Payloads,
    force: Annotated[bool, Query(description="publish again tasks already queued or finished")] = False,
) -> PriorityResponse | JSONResponse:
    """Send urgent tasks straight to the queue at high priority; new ones are stored first."""
    return stored_or_503(await service.push_priority(payloads, force=force))


@router.post("/update-status", response_model=UpdateStatusResponse, responses=ERRORS)
async def update_status(service: ServiceDep, update: BulkStatusUpdate) -> UpdateStatusResponse:
    """Workers report finished tasks by record id (their Celery task id)."""
    return await service.update_status(update)


def task_filter(
    priority: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False, description="exactly")] = None,
    priority_min: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False, description="inclusive")] = None,
    priority_max: Annotated[float | None, Query(ge=-1e9, le=1e9, allow_inf_nan=False, description="inclusive")] = None,
    created_after: Annotated[AwareDatetime | None, Query(description="inclusive; ISO 8601 with a zone")] = None,
    created_before: Annotated[AwareDatetime | None, Query(description="exclusive; ISO 8601 with a zone")] = None,
    identifier: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$", description="the task's identifier")] = None,
) -> TaskFilter:
    return TaskService.task_filter(
        priority=priority,
        priority_min=priority_min,
        priority_max=priority_max,
        created_after=created_after,
        created_before=created_before,
        identifier=identifier,
    )


FilterDep = Annotated[TaskFilter, Depends(task_filter)]
DryRun = Annotated[bool, Query(description="only count the tasks that match; change nothing")]


@router.get("", response_model=TaskPageOut, responses=ERRORS)
async def list_tasks(
    service: ServiceDep,
    where: FilterDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> TaskPageOut:
    """Tasks in creation order, narrowed by every filter given; on Bitable a created-at filter may answer short
    pages (keep following next_page_token) and a null total."""
    page = await service.list_tasks(status, limit, page_token, where)
    items = [TaskOut.of(record) for record in page.items]
    return TaskPageOut(items=items, next_page_token=page.next_page_token, total=page.total)


@router.post("/find", response_model=TaskOut, responses=ERRORS)
async def find_task(
    service: ServiceDep, payload: Annotated[dict[str, Any], Body(description="a task's payload, as ingested")]
) -> TaskOut:
    """The task of a payload (its identifier computed as ingest computes it), or 404."""
    return TaskOut.of(await service.find_task(payload))


@router.post("/bulk/retry", response_model=BulkOut, responses=ERRORS)
async def retry_failed(service: ServiceDep, where: FilterDep, dry_run: DryRun = False) -> BulkOut:
    """Every FAILED task the filter matches → PENDING with attempts reset; at most 10,000 a request, oldest first."""
    return await service.retry_failed(where, dry_run=dry_run)


@router.post("/bulk/cancel", response_model=BulkOut, responses=ERRORS)
async def cancel_pending(service: ServiceDep, where: FilterDep, dry_run: DryRun = False) -> BulkOut:
    """Every PENDING task the filter matches → CANCELLED; at most 10,000 a request, oldest first."""
    return await service.cancel_pending(where, dry_run=dry_run)


@router.get("/{record_id:record_id}", response_model=TaskOut, responses=ERRORS)
async def get_task(service: ServiceDep, record_id: RecordId) -> TaskOut:
    return TaskOut.of(await service.get_task(record_id))


@router.patch("/{record_id:record_id}", response_model=TaskOut, responses=ERRORS)
async def change_priority(service: ServiceDep, record_id: RecordId, change: PriorityChange) -> TaskOut:
    """A PENDING task's new priority (higher is picked first); the next cycle picks by it."""
    return TaskOut.of(await service.change_priority(record_id, change.priority))


@router.post("/{record_id:record_id}/retry", response_model=TaskOut, responses=ERRORS)
async def retry_task(service: ServiceDep, record_id: RecordId) -> TaskOut:
    """FAILED or CANCELLED → PENDING, with the attempt count reset."""
    return TaskOut.of(await service.retry_task(record_id))


@router.delete("/{record_id:record_id}", response_model=TaskOut, responses=ERRORS)
async def cancel_task(service: ServiceDep, record_id: RecordId) -> TaskOut:
    """PENDING → CANCELLED: the task stays in the pool, withdrawn."""
    return TaskOut.of(await service.cancel_task(record_id))
