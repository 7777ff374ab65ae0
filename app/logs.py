"""One JSON line per event, with the request id, and no secret in any of them — the SDK's own lines included."""

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from app.api.errors import UNEXPECTED, error_response
from app.config import Settings

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_HANDLER_NAME = "task-manager"

# tokens that are secrets whatever their value: bearer credentials, Feishu tenant/app tokens, URL passwords
_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1***"),
    (re.compile(r"\b([tu]-[A-Za-z0-9._-]{8,})"), "t-***"),
    (re.compile(r"(://[^:/\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"(/bot/v2/hook/)[^\s\"'/?]+"), r"\1***"),
    (
        re.compile(
            r"(?i)([\"']?(?:app_secret|secret|tenant_access_token|app_access_token|sign)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
        ),
        r"\1***",
    ),
]


class Redactor(logging.Filter):
    """Rewrites every record a handler emits, so a secret never reaches the output."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional embeddings,
# overrides and isolates: any of them in a logged value could end a line early or make it read otherwise
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(text: str, keep: str = "") -> str:
    """Every unsafe character as a visible escape (\\n, \\u2028…), so one event is one line, as it reads."""
    return _UNSAFE.sub(lambda m: m[0] if m[0] in keep else _NAMED.get(m[0], f"\\u{ord(m[0]):04x}"), text)


class OneLine(logging.Filter):
    """Escapes what a request can put in a line (a path, a header, an error text) before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escaped(record.getMessage())
        record.args = None
        if record.exc_text:
            record.exc_text = escaped(record.exc_text, keep="\n")  # a traceback's own lines stay lines
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": request_id.get(),
            "msg": record.getMessage(),
        }
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def secrets_of(settings: Settings) -> list[str]:
    url = settings.feishu_robot_webhook_url
    return [
        settings.feishu_app_secret.get_secret_value(),
        settings.feishu_robot_secret.get_secret_value(),
        url.rsplit("/", 1)[-1] if "/hook/" in url else "",
        *(key.get_secret_value() for key in settings.api_keys),
    ]


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Route every logger (ours, uvicorn's, the SDK's, Celery's) through one redacting handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler.addFilter(Redactor(secrets_of(settings)))
    handler.addFilter(OneLine())  # after the redactor, which has turned any traceback into exc_text
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:  # ours from an earlier start only
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "Lark"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # our middleware logs each request with its id
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs full URLs: the bot webhook's token is a secret
    return handler


class RequestIdMiddleware:
    """Gives each request an id (X-Request-ID when the caller sends one), logs it once, and echoes it back."""

    def __init__(self, app: Any):
        self.app = app
        self.log = logging.getLogger("app.http")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        began = time.perf_counter()
        status, started = 500, False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # here, not in a FastAPI handler: the server's own error middleware answers outside this one, without the id
            self.log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # the answer had begun: nothing left but to close the connection
            await error_response(*UNEXPECTED)(scope, receive, send_with_id)
        finally:
            self.log.info(
                "%s %s %d %.1fms", scope["method"], scope["path"], status, (time.perf_counter() - began) * 1000
            )
            request_id.reset(token)
