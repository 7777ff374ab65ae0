from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import ServiceDep
from app.api.tasks import ERRORS
from app.models import ReplenishReport, StatsOut

router = APIRouter(tags=["operations"])


@router.post("/api/replenish", response_model=ReplenishReport, responses=ERRORS)
async def replenish(
    service: ServiceDep, dry_run: Annotated[bool, Query(description="report what would be claimed")] = False
) -> ReplenishReport:
    """Run the replenish cycle now and answer its report (409 while another cycle runs)."""
    return await service.replenish(dry_run=dry_run)


@router.get("/api/stats", response_model=StatsOut, responses=ERRORS)
async def stats(service: ServiceDep, request: Request) -> StatsOut:
    """Counts per status, queue depth, and the last and next replenish."""
    result = await service.stats()
    scheduler = request.app.state.scheduler
    result.next_replenish, result.scheduler_owner = scheduler.next_run_time(), scheduler.owner
    return result


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}
