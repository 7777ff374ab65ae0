"""The ASGI guard in front of every route: API key and body size checked before the body is read."""

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, service_error_response
from app.api.security import Unauthorized, check_api_key, supplied_key


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI lets it out of its body parsing as it is; rendered as 413 request_too_large."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over MAX_REQUEST_BYTES ({limit} bytes); send smaller batches")


class RequestGuard:
    """Refuses what it can before a byte of the body is read, so a refused body costs no memory and no parse:
    an /api request without a valid key (401), a body whose Content-Length is over MAX_REQUEST_BYTES (413).
    A body without a length (chunked) is cut off as soon as it passes the limit (413)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        headers = Headers(scope=scope)
        if scope["path"] == "/api" or scope["path"].startswith("/api/"):
            try:
                check_api_key(supplied_key(headers), state.api_keys)
            except Unauthorized as exc:
                refusal = service_error_response(exc)
                refusal.headers["Connection"] = "close"  # or the server reads (to drop) a body nobody wants
                await refusal(scope, receive, send)
                return
        limit: int = state.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit, scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    exc = BodyTooLarge(limit)
    # Connection: close, so the server does not read the unread rest of the body to keep the connection
    await error_response(413, "request_too_large", exc.detail, {"Connection": "close"})(scope, receive, send)
