"""Every error answer's body, built here: service errors, partial results, failed cycles and FastAPI's own."""

from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError
from app.models import PartlyStored, ReplenishReport

T = TypeVar("T")
CYCLE_RETRY_AFTER = "30"  # seconds: a failed cycle is a broker or store outage, not a busy file

# an unexpected error is answered by RequestIdMiddleware, which logs it with its request id
UNEXPECTED = (500, "internal_error", "unexpected error; see the service log")


def error_response(
    status: int, error: str, detail: object, headers: dict[str, str] | None = None, **extra
) -> JSONResponse:
    """Every error answer's body, `{"error", "detail", …}`: built here only, from plain JSON values."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status_code, exc.error, exc.detail, exc.headers)


def stored_or_503(result: T | PartlyStored) -> T | JSONResponse:
    """A request that stores tasks: its answer, or the 503 saying per payload what landed (`items`)."""
    if not isinstance(result, PartlyStored):
        return result
    error = result.error
    return error_response(error.status_code, error.error, result.detail, error.headers, items=result.items)


def report_or_503(report: ReplenishReport) -> ReplenishReport | JSONResponse:
    """A cycle's report, or the 503 naming what stopped it, with the report attached."""
    if report.outcome != "failed":
        return report
    headers = {"Retry-After": CYCLE_RETRY_AFTER}
    body = {"report": report.model_dump(mode="json")}
    return error_response(503, report.error_code or "internal_error", report.error or "", headers, **body)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return service_error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()[:20]
    ]
    if any(problem["type"] == "json_invalid" for problem in problems):
        return error_response(400, "invalid_json", problems)
    return error_response(422, "invalid_input", problems)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    name = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, name, exc.detail, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
