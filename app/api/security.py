"""API keys: X-API-Key or a bearer token, compared in constant time; 401 when API_KEYS is set and none matches."""

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from app.errors import ServiceError

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="one of API_KEYS, as a bearer token")


class Unauthorized(ServiceError):
    status_code = 401
    error = "unauthorized"

    def __init__(self, detail: str):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer, ApiKey header="X-API-Key"'})


async def require_api_key(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When API_KEYS is set, every /api route needs one of them (RequestGuard checks it first, before the body)."""
    check_api_key(api_key or (bearer.credentials if bearer else None), request.app.state.api_keys)


def supplied_key(headers: Headers) -> str | None:
    """The key a request carries, read as the two dependencies above read it."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return headers.get("x-api-key") or (credentials.strip() if scheme.lower() == "bearer" else None) or None


def check_api_key(supplied: str | None, keys: list[bytes]) -> None:
    """Compared in constant time, against every key; no keys configured: the API is open."""
    if not keys:
        return
    if not supplied:
        raise Unauthorized("send an API key in X-API-Key or Authorization: Bearer")
    given = supplied.encode()
    matches = [hmac.compare_digest(given, key) for key in keys]  # every key, always: no early exit to time
    if not any(matches):
        raise Unauthorized("the API key is not valid")
