import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError

log = logging.getLogger(__name__)


def _error(status: int, error: str, detail: object, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return _error(exc.status_code, exc.error, exc.detail, exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()[:20]
    ]
    if any(problem["type"] == "json_invalid" for problem in problems):
        return _error(400, "invalid_json", problems)
    return _error(422, "invalid_input", problems)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    name = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, name, exc.detail, getattr(exc, "headers", None))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _error(500, "internal_error", "unexpected error; see the service log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
