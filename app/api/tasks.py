"""The task routes: parse, call the service, shape the answer."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from app.api.deps import ServiceDep
from app.api.errors import stored_or_503
from app.api.security import require_api_key
from app.models import (
    RECORD_ID_PATTERN,
    BulkStatusUpdate,
    ErrorOut,
    IngestResponse,
    PriorityChange,
    PriorityResponse,
    TaskOut,
    TaskPageOut,
    TaskStatus,
    UpdateStatusResponse,
)

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Depends(require_api_key)])
ACTIONS = ("ingest", "priority-queue", "update-status")


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


@router.get("", response_model=TaskPageOut, responses=ERRORS)
async def list_tasks(
    service: ServiceDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> TaskPageOut:
    page = await service.list_tasks(status, limit, page_token)
    items = [TaskOut.of(record) for record in page.items]
    return TaskPageOut(items=items, next_page_token=page.next_page_token, total=page.total)


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
