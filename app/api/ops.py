"""Operations routes: the cycle on demand, stats, and the probes (/healthz, /readyz, /metrics)."""

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import CycleDep, ServiceDep
from app.api.errors import report_or_503
from app.api.security import require_api_key
from app.api.tasks import ERRORS
from app.errors import ServiceError, StoreUnavailable
from app.models import ReplenishReport, StatsOut

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])
probes = APIRouter(tags=["probes"])
PROBE_TIMEOUT_SECONDS = 5


@router.post("/api/replenish", response_model=ReplenishReport, responses=ERRORS)
async def replenish(
    cycle: CycleDep, dry_run: Annotated[bool, Query(description="report what would be claimed")] = False
) -> ReplenishReport | JSONResponse:
    """Run the replenish cycle now and answer its report (409 while another cycle runs; 503 when it failed)."""
    return report_or_503(await cycle.run(dry_run=dry_run))


@router.get("/api/stats", response_model=StatsOut, responses=ERRORS)
async def stats(service: ServiceDep, request: Request) -> StatsOut:
    """Counts per status (and when they were counted), the report backlog, queue depth, the last and next replenish."""
    result = await service.stats()
    scheduler = request.app.state.scheduler
    result.next_replenish, result.scheduler_owner = scheduler.next_run_time(), scheduler.owner
    return result


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@probes.get("/readyz", responses={503: {"description": "a dependency is down; the body names it"}})
async def readyz(service: ServiceDep) -> JSONResponse:
    """The store (Feishu token and table, or SQLite) and the broker answer within seconds; DATA_DIR is writable.

    On Bitable the store's answer is its latest real call within READY_CHECK_SECONDS; at most one call a window.
    """
    probes_by_name = {
        "store": service.store.check,
        "broker": service.publisher.check,
        "data_dir": service.check_data_dir,
    }
    names = tuple(probes_by_name)
    results = await asyncio.gather(
        *(asyncio.wait_for(check(), PROBE_TIMEOUT_SECONDS) for check in probes_by_name.values()),
        return_exceptions=True,
    )
    checks = {name: _probe_result(result) for name, result in zip(names, results, strict=True)}
    down = [f"{name}: {state}" for name, state in checks.items() if state != "ok"]
    if down:
        return JSONResponse({"error": "not_ready", "detail": "; ".join(down), "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


# load balancers probe with HEAD as often as with GET; kept out of the schema, which lists each probe once
for path, probe in (("/healthz", healthz), ("/readyz", readyz)):
    probes.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)


@probes.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format; the report backlog is read at the scrape (it is local: no Feishu call)."""
    try:
        service.report_backlog()
    except StoreUnavailable as exc:  # the other metrics still answer; the backlog gauges keep their last values
        log.warning("the report backlog could not be read for /metrics: %s", exc.detail)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _probe_result(result: object) -> str:
    if isinstance(result, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_SECONDS}s"
    if isinstance(result, ServiceError):
        return result.detail
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return "ok"
