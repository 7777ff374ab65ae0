"""A fake Feishu Open Platform (auth, Bitable records/fields, custom bot) over real HTTP on loopback.

It follows /work/shared/reference/feishu-open-api.md; every behaviour the sheet does not fix is marked
"# not in the reference sheet". Drive it through the real lark-oapi SDK with ``domain(emu.url)``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import copy
import hashlib
import hmac
import json
import math
import random
import signal
import socket
import string
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_FIELDS",
    "ENDPOINTS",
    "FAULT_KINDS",
    "Call",
    "FeishuEmulator",
    "bot_sign",
]

TEXT, NUMBER, SINGLE_SELECT, DATE, CREATED_TIME = 1, 2, 3, 5, 1001
FIELD_TYPES = {
    TEXT: "Text",
    NUMBER: "Number",
    SINGLE_SELECT: "SingleSelect",
    DATE: "DateTime",
    CREATED_TIME: "CreatedTime",
}

DEFAULT_FIELDS: list[tuple] = [
    ("Identifier", TEXT),
    (
        "Status",
        SINGLE_SELECT,
        {"options": [{"name": n} for n in ("PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED")]},
    ),
    ("Payload", TEXT),
    ("CreatedAt", DATE),
    ("Priority", NUMBER),
    ("Attempts", NUMBER),
    ("ClaimedAt", DATE),
]

ENDPOINTS = (
    "token",
    "fields_list",
    "fields_create",
    "batch_create",
    "batch_update",
    "batch_delete",
    "batch_get",
    "search",
    "bot",
)
BITABLE_ENDPOINTS = frozenset(ENDPOINTS) - {"token", "bot"}
WRITE_ENDPOINTS = frozenset({"batch_create", "batch_update", "batch_delete"})
FAULT_KINDS = frozenset(
    {
        "rate_limit",
        "conflict",
        "not_ready",
        "too_many",
        "timeout_code",
        "server_error",
        "html_502",
        "lost_answer",
        "token_expired",
    }
)

BATCH_LIMITS = {"batch_create": 1000, "batch_update": 1000, "batch_delete": 500, "batch_get": 100}
# not in the reference sheet: one window per endpoint for the whole app (the sheet gives a rate per call).
RATE_LIMITS = {"batch_create": 50, "batch_update": 50, "batch_delete": 50, "batch_get": 20, "search": 20}
BOT_LIMITS = ((1.0, 5), (60.0, 100))
BOT_MAX_BODY = 20 * 1024
TOKEN_TTL = 7200
MAX_TEXT = 100_000
MAX_FIELDS = 300
MAX_FILTER_JSON = 2000
MAX_CONDITIONS = 50
MAX_VALUES = 10
MAX_SEARCH_PAGE = 500
MAX_FIELDS_PAGE = 100  # not in the reference sheet: the fields list page size cap
# not in the reference sheet: date filters count days in UTC+8, Feishu's default tenant time zone.
FILTER_TZ = timezone(timedelta(hours=8))

OPERATORS = frozenset(
    {
        "is",
        "isNot",
        "contains",
        "doesNotContain",
        "isEmpty",
        "isNotEmpty",
        "isGreater",
        "isGreaterEqual",
        "isLess",
        "isLessEqual",
    }
)
COMPARISONS = frozenset({"isGreater", "isGreaterEqual", "isLess", "isLessEqual"})
# not in the reference sheet: which operators each field type accepts (others answer 1254018).
TYPE_OPERATORS = {
    TEXT: frozenset({"is", "isNot", "contains", "doesNotContain", "isEmpty", "isNotEmpty"}),
    SINGLE_SELECT: frozenset({"is", "isNot", "contains", "doesNotContain", "isEmpty", "isNotEmpty"}),
    NUMBER: frozenset({"is", "isNot", "isEmpty", "isNotEmpty"}) | COMPARISONS,
    DATE: frozenset({"is", "isNot", "isEmpty", "isNotEmpty"}) | COMPARISONS,
    CREATED_TIME: frozenset({"is", "isNot", "isEmpty", "isNotEmpty"}) | COMPARISONS,
}

INVALID_TOKEN_MSG = "Invalid access token for authorization. Please make a request with token attached."
BOT_SUCCESS = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Call:
    endpoint: str
    method: str
    path: str
    http_status: int | None  # None: the connection was dropped without an answer (lost_answer)
    code: int | None  # None: the answer had no JSON code (html_502, unknown path)
    n_records: int
    t_start: float
    t_end: float


class ApiError(Exception):
    def __init__(self, code: int, msg: str, http_status: int = 200) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.http_status = code, msg, http_status


@dataclass
class _Answer:
    status: int
    body: bytes
    code: int | None
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    n_records: int = 0
    drop: bool = False


@dataclass
class _Field:
    field_id: str
    name: str
    type: int
    property: dict | None


@dataclass
class _Record:
    fields: dict[str, Any]
    created: int
    modified: int


@dataclass
class _Table:
    fields: dict[str, _Field]
    records: dict[str, _Record] = field(default_factory=dict)
    client_tokens: dict[str, bytes] = field(default_factory=dict)
    # (filter, sort) → the matching rows in order, until the table changes: paging through a large table
    # filtered every row for every page, under the lock, which is a cost of this emulator, not of Feishu
    matches: dict[tuple[str, str, date], list] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: str
    endpoint: str | None
    times: int | None
    probability: float | None


@dataclass
class _Bot:
    secret: str | None
    messages: list[dict] = field(default_factory=list)
    sent: deque = field(default_factory=deque)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _now_ms() -> int:
    return int(time.time() * 1000)


def bot_sign(timestamp: str | int, secret: str) -> str:
    """The custom bot signature: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def _route(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    parts = [unquote(p) for p in path.split("/")]
    if parts[:2] != ["", "open-apis"]:
        return "unknown", ()
    rest = parts[2:]
    if rest == ["auth", "v3", "tenant_access_token", "internal"] and method == "POST":
        return "token", ()
    if len(rest) == 4 and rest[:3] == ["bot", "v2", "hook"] and method == "POST":
        return "bot", (rest[3],)
    if len(rest) >= 6 and rest[:3] == ["bitable", "v1", "apps"] and rest[4] == "tables":
        ids, tail = (rest[3], rest[5]), rest[6:]
        if tail == ["fields"]:
            if method == "GET":
                return "fields_list", ids
            if method == "POST":
                return "fields_create", ids
        if method == "POST" and len(tail) == 2 and tail[0] == "records":
            name = {
                "batch_create": "batch_create",
                "batch_update": "batch_update",
                "batch_delete": "batch_delete",
                "batch_get": "batch_get",
                "search": "search",
            }.get(tail[1])
            if name:
                return name, ids
    return "unknown", ()


def _parse_body(body: bytes) -> dict:
    """The request's JSON object; no body or a non-object answers 9499 (as the sheet says for search)."""
    if not body:
        raise ApiError(9499, "Bad Request", 400)
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(9499, "Bad Request", 400) from None  # not in the reference sheet: malformed JSON
    if not isinstance(data, dict):
        raise ApiError(9499, "Bad Request", 400)  # not in the reference sheet
    return data


def _wrong_body(what: str) -> ApiError:
    return ApiError(1254001, f"WrongRequestBody: {what}")  # not in the reference sheet: bad body shape


def _bad_param(what: str) -> ApiError:
    # not in the reference sheet: invalid query parameters (page_size, page_token)
    return ApiError(99992402, f"field validation failed: {what}", 400)


def _bad_filter(what: str) -> ApiError:
    return ApiError(1254018, f"InvalidFilter: {what}")


def _encode_page(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_page(token: str | None) -> int:
    if token is None or token == "":
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        offset = json.loads(raw)["offset"]
    except (ValueError, KeyError, TypeError):
        raise _bad_param("page_token") from None
    if not isinstance(offset, int) or offset < 0:
        raise _bad_param("page_token")
    return offset


def _page_size(query: dict[str, str], default: int, maximum: int) -> int:
    raw = query.get("page_size")
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        raise _bad_param("page_size") from None
    if not 1 <= size <= maximum:
        raise _bad_param("page_size")
    return size


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, FILTER_TZ).date()


class FeishuEmulator:
    """A fake Feishu Open Platform. Thread-safe: one lock guards all state."""

    def __init__(
        self,
        app_id: str = "cli_test",
        app_secret: str = "test-secret",
        seed: int = 0,
        latency: float = 0.0,
        rate_limits: bool = True,
        port: int = 0,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.latency = latency
        self.rate_limits = rate_limits
        self.repeat_token_answer = "original"
        # Seconds for rate windows and token lifetimes; tests may replace it to freeze time.
        self.clock = time.monotonic
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, str], _Table] = {}
        self._tokens: dict[str, float] = {}
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._windows: dict[str, deque] = {name: deque() for name in RATE_LIMITS}
        self._writing: set[tuple[str, str]] = set()
        self._bots: dict[str, _Bot] = {}
        self._record_ids: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FeishuEmulator:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.emulator = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="feishu-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FeishuEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- direct state access -----------------------------------------------------------------------
    def add_table(self, app_token: str, table_id: str, fields: list[tuple] | None = None) -> None:
        specs = DEFAULT_FIELDS if fields is None else fields
        with self._lock:
            if (app_token, table_id) in self._tables:
                raise ValueError(f"table {app_token}/{table_id} exists")
            table = _Table(fields={})
            for spec in specs:
                name, ftype = spec[0], spec[1]
                prop = spec[2] if len(spec) > 2 else None
                self._add_field(table, name, ftype, prop)
            self._tables[(app_token, table_id)] = table

    def insert_rows(self, app_token: str, table_id: str, rows: list[dict]) -> list[str]:
        """Insert rows as if typed by hand: no API, no limits, but values must fit the field types."""
        with self._lock:
            table = self._tables[(app_token, table_id)]
            try:
                for row in rows:
                    self._check_fields(table, row)
            except ApiError as exc:
                raise ValueError(str(exc)) from None
            return [self._create(table, row) for row in rows]

    def rows(self, app_token: str, table_id: str) -> dict[str, dict]:
        with self._lock:
            table = self._tables[(app_token, table_id)]
            return {rid: copy.deepcopy(rec.fields) for rid, rec in table.records.items()}

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, endpoint: str | None = None, code: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for c in self._calls
                if (endpoint is None or c.endpoint == endpoint) and (code is None or c.code == code)
            )

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def add_fault(
        self, kind: str, endpoint: str | None = None, times: int | None = None, probability: float | None = None
    ) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        with self._lock:
            self._faults.append(_Fault(kind, endpoint, times, probability))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def add_bot(self, token: str, secret: str | None = None) -> None:
        with self._lock:
            self._bots[token] = _Bot(secret)

    def bot_messages(self, token: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._bots[token].messages)

    # ---- request handling --------------------------------------------------------------------------
    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Answer:
        t_start = time.monotonic()
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        endpoint, params = _route(method, split.path)
        try:
            answer = self._serve(endpoint, params, query, headers, body)
        except Exception as exc:  # an emulator bug must surface as a visible 500, not a hung client
            traceback.print_exc()
            answer = self._json(500, {"code": -1, "msg": f"emulator bug: {exc!r}"})
        with self._lock:
            self._calls.append(
                Call(
                    endpoint,
                    method,
                    split.path,
                    None if answer.drop else answer.status,
                    answer.code,
                    answer.n_records,
                    t_start,
                    time.monotonic(),
                )
            )
        return answer

    def _serve(
        self, endpoint: str, params: tuple[str, ...], query: dict[str, str], headers: Any, body: bytes
    ) -> _Answer:
        if endpoint == "unknown":
            time.sleep(self.latency)
            # not in the reference sheet: unknown paths answer 404 with a JSON code
            return self._json(404, {"code": 404, "msg": "404 page not found"})
        drop, marked, early = False, None, None
        arrived = self.clock()  # the gateway counts arrivals: not when the lock (held by a search) comes free
        with self._lock:
            if self._pick_fault(endpoint, {"token_expired"}):
                self._tokens.clear()
            if endpoint in BITABLE_ENDPOINTS and not self._authorized(headers):
                early = self._error(ApiError(99991663, INVALID_TOKEN_MSG, 400))
            if early is None:
                fault = self._pick_fault(endpoint, FAULT_KINDS - {"token_expired"})
                if fault == "lost_answer":
                    drop = True
                elif fault is not None:
                    early = self._fault_answer(fault, endpoint)
            if early is None:
                early = self._check_rate(endpoint, arrived)  # not in the reference sheet: auth, faults, then rate
            if early is None and endpoint in WRITE_ENDPOINTS:
                if params in self._writing:
                    early = self._error(ApiError(1254291, "Write conflict"))
                else:
                    self._writing.add(params)
                    marked = params
        try:
            time.sleep(self.latency)
            if early is not None:
                answer = early
            else:
                with self._lock:
                    answer = self._process(endpoint, params, query, headers, body)
        finally:
            if marked is not None:
                with self._lock:
                    self._writing.discard(marked)
        if endpoint in BATCH_LIMITS:
            answer.n_records = self._request_size(endpoint, body)
        answer.drop = drop
        return answer

    def _process(
        self, endpoint: str, params: tuple[str, ...], query: dict[str, str], headers: Any, body: bytes
    ) -> _Answer:
        try:
            if endpoint == "token":
                return self._json(200, self._issue_token(body))
            if endpoint == "bot":
                return self._bot(params[0], body)
            table = self._tables.get(params)
            if table is None:
                # not in the reference sheet: an unknown app_token also answers "table not found"
                raise ApiError(1254041, "TableIdNotFound")
            handler = getattr(self, f"_do_{endpoint}")
            data, n_items = handler(table, query, body, params)
            if isinstance(data, bytes):
                return _Answer(200, data, 0)
            answer = self._json(200, {"code": 0, "msg": "success", "data": data})
            answer.n_records = n_items
            return answer
        except ApiError as exc:
            return self._error(exc)

    @staticmethod
    def _request_size(endpoint: str, body: bytes) -> int:
        try:
            data = json.loads(body)
            items = data["record_ids" if endpoint == "batch_get" else "records"]
            return len(items) if isinstance(items, list) else 0
        except (ValueError, KeyError, TypeError):
            return 0

    @staticmethod
    def _json(status: int, obj: dict, headers: dict[str, str] | None = None) -> _Answer:
        return _Answer(status, _dumps(obj), obj.get("code"), headers=headers or {})

    def _error(self, exc: ApiError) -> _Answer:
        # not in the reference sheet: business errors use HTTP 200 unless a status is given
        log_id = uuid.uuid4().hex[:20]  # unseeded: errors must not shift the seeded record ids
        if exc.code in (99991400, 99991663, 9499):
            return self._json(exc.http_status, {"code": exc.code, "msg": exc.msg})
        # not in the reference sheet: error bodies carry code, msg and an error object with a log id
        return self._json(
            exc.http_status, {"code": exc.code, "msg": exc.msg, "error": {"log_id": log_id, "message": exc.msg}}
        )

    # ---- auth, faults, rate limits -----------------------------------------------------------------
    def _issue_token(self, body: bytes) -> dict:
        data = _parse_body(body)
        if data.get("app_id") != self.app_id or data.get("app_secret") != self.app_secret:
            # not in the reference sheet: the code and status for bad credentials
            raise ApiError(10014, "app secret invalid")
        # not in the reference sheet: every fetch issues a new token (old ones stay valid until expiry).
        token = "t-" + uuid.uuid4().hex  # unseeded on purpose: two emulators never share a token
        self._tokens[token] = self.clock() + TOKEN_TTL
        return {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": TOKEN_TTL}

    def _authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return False
        expiry = self._tokens.get(auth[len("Bearer ") :].strip())
        return expiry is not None and expiry > self.clock()

    def _pick_fault(self, endpoint: str, kinds: set | frozenset) -> str | None:
        for fault in list(self._faults):
            if fault.kind not in kinds:
                continue
            if fault.endpoint is None and endpoint not in BITABLE_ENDPOINTS:
                continue
            if fault.endpoint is not None and fault.endpoint != endpoint:
                continue
            if fault.probability is not None and self._rng.random() >= fault.probability:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return fault.kind
        return None

    def _fault_answer(self, kind: str, endpoint: str) -> _Answer:
        if kind == "rate_limit":
            return self._json(
                429,
                {"code": 99991400, "msg": "request trigger frequency limit"},
                {"x-ogw-ratelimit-limit": str(RATE_LIMITS.get(endpoint, 50)), "x-ogw-ratelimit-reset": "1"},
            )
        if kind == "html_502":
            return _Answer(502, HTML_502, None, content_type="text/html")
        if kind == "server_error":
            # not in the reference sheet: the code carried by an HTTP 500
            return self._error(ApiError(1255001, "InternalError", 500))
        code, msg = {  # not in the reference sheet: the msg texts
            "conflict": (1254291, "Write conflict"),
            "not_ready": (1254607, "Data not ready, please try again later"),
            "too_many": (1254290, "TooManyRequest"),
            "timeout_code": (1255040, "request timeout"),
        }[kind]
        return self._error(ApiError(code, msg))

    def _check_rate(self, endpoint: str, arrived: float) -> _Answer | None:
        limit = RATE_LIMITS.get(endpoint)
        if not self.rate_limits or limit is None:
            return None
        window = self._windows[endpoint]
        while window and window[0] <= arrived - 1.0:
            window.popleft()
        if len(window) >= limit:
            # not in the reference sheet: rejected calls do not count against the window
            reset = max(1, math.ceil(window[0] + 1.0 - arrived))
            return self._json(
                429,
                {"code": 99991400, "msg": "request trigger frequency limit"},
                {"x-ogw-ratelimit-limit": str(limit), "x-ogw-ratelimit-reset": str(reset)},
            )
        bisect.insort(window, arrived)  # in order: a call may take the lock after one that arrived later
        return None

    # ---- fields ------------------------------------------------------------------------------------
    def _new_id(self, prefix: str, n: int) -> str:
        return prefix + "".join(self._rng.choice(_ALNUM) for _ in range(n))

    def _add_field(self, table: _Table, name: Any, ftype: Any, prop: Any) -> _Field:
        if not isinstance(name, str) or not name:
            raise _wrong_body("field_name")
        if name in table.fields:
            raise ApiError(1254014, "FieldNameDuplicated")  # not in the reference sheet
        if ftype not in FIELD_TYPES or isinstance(ftype, bool):
            raise _wrong_body(f"unsupported field type {ftype!r}")  # not in the reference sheet
        if len(table.fields) >= MAX_FIELDS:
            raise _wrong_body("a table holds at most 300 fields")  # not in the reference sheet: the code
        if prop is not None and not isinstance(prop, dict):
            raise _wrong_body("property")
        prop = copy.deepcopy(prop)
        if ftype == SINGLE_SELECT:
            options = (prop or {}).get("options") or []
            if not isinstance(options, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in options
            ):
                raise _wrong_body("property.options")
            prop = dict(prop or {})
            prop["options"] = [
                {"id": self._new_id("opt", 8), "name": o["name"], "color": i % 55} for i, o in enumerate(options)
            ]
        fld = _Field(self._new_id("fld", 10), name, ftype, prop)
        table.fields[name] = fld
        table.matches.clear()
        return fld

    @staticmethod
    def _field_json(fld: _Field, primary: bool) -> dict:
        return {
            "field_id": fld.field_id,
            "field_name": fld.name,
            "type": fld.type,
            "property": copy.deepcopy(fld.property),
            "is_primary": primary,
            "ui_type": FIELD_TYPES[fld.type],
        }

    def _do_fields_list(self, table: _Table, query: dict, body: bytes, params: tuple) -> tuple[dict, int]:
        size = _page_size(query, 20, MAX_FIELDS_PAGE)
        offset = _decode_page(query.get("page_token"))
        fields = list(table.fields.values())
        page = fields[offset : offset + size]
        data: dict[str, Any] = {
            "items": [self._field_json(f, f is fields[0]) for f in page],
            "has_more": offset + size < len(fields),
            "total": len(fields),
        }
        if data["has_more"]:
            data["page_token"] = _encode_page(offset + size)
        return data, len(page)

    def _do_fields_create(self, table: _Table, query: dict, body: bytes, params: tuple) -> tuple[dict, int]:
        data = _parse_body(body)
        fld = self._add_field(table, data.get("field_name"), data.get("type"), data.get("property"))
        return {"field": self._field_json(fld, False)}, 0

    # ---- record writes -----------------------------------------------------------------------------
    def _check_fields(self, table: _Table, fields: Any) -> None:
        if not isinstance(fields, dict):
            raise _wrong_body("fields")
        for name, value in fields.items():
            fld = table.fields.get(name)
            if fld is None:
                raise ApiError(1254045, "FieldNameNotFound")
            if value is None:
                continue  # not in the reference sheet: a null value empties the cell
            if fld.type == TEXT:
                if not isinstance(value, str):
                    raise ApiError(1254060, "TextFieldConvFail")
                if len(value) > MAX_TEXT:
                    raise ApiError(1254130, "TooLargeCell")
            elif fld.type == NUMBER:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ApiError(1254061, "NumberFieldConvFail")
            elif fld.type == SINGLE_SELECT:
                if not isinstance(value, str):
                    raise ApiError(1254062, "SingleSelectFieldConvFail")
            elif fld.type == DATE:
                if isinstance(value, bool) or not isinstance(value, int):  # not in the reference sheet: floats
                    raise ApiError(1254064, "DatetimeFieldConvFail")
            else:
                raise _wrong_body(f"field {name!r} is read-only")  # not in the reference sheet

    def _store(self, table: _Table, target: dict, fields: dict) -> None:
        for name, value in fields.items():
            fld = table.fields[name]
            if fld.type == SINGLE_SELECT and isinstance(value, str) and value:
                options = fld.property.setdefault("options", [])
                if all(o["name"] != value for o in options):
                    options.append({"id": self._new_id("opt", 8), "name": value, "color": len(options) % 55})
            target[name] = copy.deepcopy(value)

    def _create(self, table: _Table, fields: dict) -> str:
        rid = self._new_id("rec", 14)
        while rid in self._record_ids:
            rid = self._new_id("rec", 14)
        self._record_ids.add(rid)
        now = _now_ms()
        rec = _Record({}, now, now)
        self._store(table, rec.fields, fields)
        table.records[rid] = rec
        table.matches.clear()
        return rid

    @staticmethod
    def _list(data: dict, key: str, limit: int) -> list:
        items = data.get(key)
        if not isinstance(items, list) or not items:
            raise _wrong_body(f"{key} must be a non-empty list")  # not in the reference sheet: empty batch
        if len(items) > limit:
            raise ApiError(1254104, "RecordAddOnceExceedLimit")
        return items

    def _do_batch_create(self, table: _Table, query: dict, body: bytes, params: tuple):
        data = _parse_body(body)
        client_token = query.get("client_token")
        if client_token and client_token in table.client_tokens:
            if self.repeat_token_answer == "original":
                return table.client_tokens[client_token], 0
            raise ApiError(1254608, "same request submitted repeatedly")
        records = self._list(data, "records", BATCH_LIMITS["batch_create"])
        for rec in records:
            if not isinstance(rec, dict):
                raise _wrong_body("records")
            self._check_fields(table, rec.get("fields", {}))
        out = []
        for rec in records:
            fields = rec.get("fields", {})
            out.append({"fields": copy.deepcopy(fields), "record_id": self._create(table, fields)})
        result = {"records": out}
        if client_token:
            # not in the reference sheet: tokens are per table and remembered only for a successful create
            table.client_tokens[client_token] = _dumps({"code": 0, "msg": "success", "data": result})
        return result, len(out)

    def _do_batch_update(self, table: _Table, query: dict, body: bytes, params: tuple):
        records = self._list(_parse_body(body), "records", BATCH_LIMITS["batch_update"])
        for rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("record_id"), str):
                raise _wrong_body("records[].record_id")
        for rec in records:
            if rec["record_id"] not in table.records:
                raise ApiError(1254043, "RecordIdNotFound")
        for rec in records:
            self._check_fields(table, rec.get("fields", {}))
        now, out = _now_ms(), []
        table.matches.clear()
        for rec in records:
            stored = table.records[rec["record_id"]]
            fields = rec.get("fields", {})
            self._store(table, stored.fields, fields)
            stored.modified = now
            out.append({"fields": copy.deepcopy(fields), "record_id": rec["record_id"]})
        return {"records": out}, len(out)

    def _do_batch_delete(self, table: _Table, query: dict, body: bytes, params: tuple):
        ids = self._list(_parse_body(body), "records", BATCH_LIMITS["batch_delete"])
        if not all(isinstance(i, str) for i in ids):
            raise _wrong_body("records must hold record ids")
        if any(i not in table.records for i in ids):
            # not in the reference sheet: delete fails whole on an unknown id, like batch_update
            raise ApiError(1254043, "RecordIdNotFound")
        for rid in ids:
            table.records.pop(rid, None)
        table.matches.clear()
        return {"records": [{"deleted": True, "record_id": rid} for rid in ids]}, len(ids)

    # ---- record reads ------------------------------------------------------------------------------
    def _read(self, table: _Table, rid: str, rec: _Record, names: list[str] | None, auto: bool) -> dict:
        out: dict[str, Any] = {}
        for name, fld in table.fields.items():
            if names is not None and name not in names:
                continue
            value = rec.created if fld.type == CREATED_TIME else rec.fields.get(name)
            if _is_empty(value):
                continue
            out[name] = [{"type": "text", "text": value}] if fld.type == TEXT else copy.deepcopy(value)
        item: dict[str, Any] = {"fields": out, "record_id": rid}
        if auto:
            item["created_time"] = rec.created
            item["last_modified_time"] = rec.modified
        return item

    def _do_batch_get(self, table: _Table, query: dict, body: bytes, params: tuple):
        data = _parse_body(body)
        ids = self._list(data, "record_ids", BATCH_LIMITS["batch_get"])
        if not all(isinstance(i, str) for i in ids):
            raise _wrong_body("record_ids")
        auto = data.get("automatic_fields") is True
        found = [self._read(table, i, table.records[i], None, auto) for i in ids if i in table.records]
        absent = [i for i in ids if i not in table.records]
        return {"records": found, "absent_record_ids": absent, "forbidden_record_ids": []}, len(ids)

    def _do_search(self, table: _Table, query: dict, body: bytes, params: tuple):
        size = _page_size(query, 20, MAX_SEARCH_PAGE)
        offset = _decode_page(query.get("page_token"))
        data = _parse_body(body)
        view_id = data.get("view_id")
        if view_id is not None and not isinstance(view_id, str):
            raise _wrong_body("view_id")  # not in the reference sheet: views are not emulated, all rows show
        names = data.get("field_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _wrong_body("field_names")
            if any(n not in table.fields for n in names):
                raise ApiError(1254045, "FieldNameNotFound")  # not in the reference sheet: unknown field_names
        keys = self._sort_keys(table, data.get("sort"))
        predicate = self._compile_filter(table, data.get("filter"))
        # today's date too: a ["Today"] filter matches other rows tomorrow
        matches_key = (
            json.dumps(data.get("filter"), sort_keys=True),
            json.dumps(data.get("sort"), sort_keys=True),
            datetime.now(FILTER_TZ).date(),
        )
        rows = table.matches.get(matches_key)
        if rows is None:
            rows = [(rid, rec) for rid, rec in table.records.items() if predicate(rec)]
            for fld, desc in reversed(keys):
                present = [r for r in rows if not _is_empty(self._cell(fld, r[1]))]
                empty = [r for r in rows if _is_empty(self._cell(fld, r[1]))]
                present.sort(key=lambda r, f=fld: self._sort_value(f, self._cell(f, r[1])), reverse=desc)
                rows = present + empty  # not in the reference sheet: empty cells sort last either way
            if len(table.matches) >= 16:
                table.matches.clear()
            table.matches[matches_key] = rows
        auto = data.get("automatic_fields") is True
        page = rows[offset : offset + size]
        result: dict[str, Any] = {
            "items": [self._read(table, rid, rec, names, auto) for rid, rec in page],
            "has_more": offset + size < len(rows),
            "total": len(rows),
        }
        if result["has_more"]:
            result["page_token"] = _encode_page(offset + size)
        return result, len(page)

    @staticmethod
    def _cell(fld: _Field, rec: _Record) -> Any:
        return rec.created if fld.type == CREATED_TIME else rec.fields.get(fld.name)

    @staticmethod
    def _sort_value(fld: _Field, value: Any) -> Any:
        if fld.type == SINGLE_SELECT:
            # not in the reference sheet: single select sorts by option order, like the UI
            names = [o["name"] for o in fld.property.get("options", [])]
            return names.index(value) if value in names else len(names)
        return value

    def _sort_keys(self, table: _Table, sort: Any) -> list[tuple[_Field, bool]]:
        if sort is None:
            return []
        if not isinstance(sort, list) or not all(isinstance(s, dict) for s in sort):
            raise _wrong_body("sort")
        keys = []
        for s in sort:
            name = s.get("field_name")
            if name not in table.fields:
                raise ApiError(1254045, "FieldNameNotFound")  # not in the reference sheet: unknown sort field
            keys.append((table.fields[name], s.get("desc") is True))
        return keys

    # ---- filter ------------------------------------------------------------------------------------
    def _compile_filter(self, table: _Table, flt: Any):
        if flt is None:
            return lambda rec: True
        count = [0]
        top = self._compile_group(table, flt, count, allow_children=True)
        if count[0] > MAX_CONDITIONS:
            raise _bad_filter(f"at most {MAX_CONDITIONS} conditions")
        # not in the reference sheet: shape is checked before length (51 conditions never fit in 2,000 chars),
        # and length is measured as the SDK serializes it (json.dumps defaults, ensure_ascii=False)
        if len(json.dumps(flt, ensure_ascii=False)) > MAX_FILTER_JSON:
            raise ApiError(1254107, "filter too long")
        return top

    def _compile_group(self, table: _Table, group: Any, count: list[int], allow_children: bool):
        if not isinstance(group, dict):
            raise _bad_filter("filter must be an object")
        conjunction = group.get("conjunction")
        if conjunction not in ("and", "or"):
            raise _bad_filter("conjunction must be 'and' or 'or'")  # not in the reference sheet: required
        conditions = group.get("conditions") or []
        children = group.get("children") or []
        if not isinstance(conditions, list) or not isinstance(children, list):
            raise _bad_filter("conditions and children must be lists")
        if children and not allow_children:
            raise _bad_filter("children cannot nest")  # the SDK's ChildrenFilter has no children
        parts = []
        for cond in conditions:
            count[0] += 1
            parts.append(self._compile_condition(table, cond))
        parts += [self._compile_group(table, child, count, allow_children=False) for child in children]
        # plain loops, not all()/any() over a generator: a search tests every row of the table with these
        if conjunction == "and" or not parts:  # not in the reference sheet: an empty "or" matches everything

            def every(rec: _Record) -> bool:
                for part in parts:
                    if not part(rec):
                        return False
                return True

            return every

        def some(rec: _Record) -> bool:
            for part in parts:
                if part(rec):
                    return True
            return False

        return some

    def _compile_condition(self, table: _Table, cond: Any):
        if not isinstance(cond, dict):
            raise _bad_filter("condition must be an object")
        fld = table.fields.get(cond.get("field_name"))
        if fld is None:
            raise _bad_filter("unknown field_name")
        op = cond.get("operator")
        if op not in OPERATORS:
            raise _bad_filter(f"unknown operator {op!r}")
        if op not in TYPE_OPERATORS[fld.type]:
            raise _bad_filter(f"operator {op} does not apply to {FIELD_TYPES[fld.type]}")
        values = cond.get("value", [])
        if values is None:
            values = []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _bad_filter("value must be a list of strings")
        if len(values) > MAX_VALUES:
            raise _bad_filter(f"at most {MAX_VALUES} values")

        name = fld.name

        def cell(rec: _Record) -> Any:
            return rec.created if fld.type == CREATED_TIME else rec.fields.get(name)

        if op in ("isEmpty", "isNotEmpty"):
            if values:
                raise _bad_filter(f"{op} takes no value")  # not in the reference sheet
            want = op == "isEmpty"
            return lambda rec: _is_empty(cell(rec)) == want
        if fld.type in (DATE, CREATED_TIME):
            day = self._filter_day(values)
            return self._comparison(op, lambda rec: None if _is_empty(cell(rec)) else _day(cell(rec)), day)
        if fld.type == NUMBER:
            if len(values) != 1:
                raise _bad_filter(f"{op} takes exactly one value")
            try:
                target = float(values[0])
            except ValueError:
                raise _bad_filter("number value must be numeric") from None
            if not math.isfinite(target):
                raise _bad_filter("number value must be finite")
            return self._comparison(op, lambda rec: None if _is_empty(cell(rec)) else cell(rec), target)
        # not in the reference sheet: text and single select compare exactly (case-sensitive)
        if op in ("is", "isNot"):
            if len(values) != 1:
                raise _bad_filter(f"{op} takes exactly one value")
            target_s = values[0]
            if op == "is":
                return lambda rec: not _is_empty(cell(rec)) and cell(rec) == target_s
            return lambda rec: _is_empty(cell(rec)) or cell(rec) != target_s
        if not values:
            raise _bad_filter(f"{op} needs a value")

        # not in the reference sheet: contains matches when any value is a substring (single select too)
        def contains(rec: _Record) -> bool:
            value = rec.fields.get(name)
            if value is None or value == "":
                return False
            for v in values:
                if v in value:
                    return True
            return False

        return contains if op == "contains" else lambda rec: not contains(rec)

    @staticmethod
    def _comparison(op: str, get: Any, target: Any):
        # not in the reference sheet: an empty cell matches only isNot among the comparing operators
        tests = {
            "is": lambda v: v == target,
            "isNot": lambda v: v != target,
            "isGreater": lambda v: v > target,
            "isGreaterEqual": lambda v: v >= target,
            "isLess": lambda v: v < target,
            "isLessEqual": lambda v: v <= target,
        }
        test = tests[op]

        def predicate(rec: _Record) -> bool:
            value = get(rec)
            if value is None:
                return op == "isNot"
            return test(value)

        return predicate

    @staticmethod
    def _filter_day(values: list[str]) -> date:
        if not values:
            raise _bad_filter("a date condition needs a value")
        today = datetime.now(FILTER_TZ).date()
        relative = {"Today": today, "Yesterday": today - timedelta(days=1), "Tomorrow": today + timedelta(days=1)}
        if values[0] in relative and len(values) == 1:
            return relative[values[0]]
        if values[0] == "ExactDate" and len(values) == 2:
            try:
                return _day(int(values[1]))
            except (ValueError, OverflowError, OSError):
                raise _bad_filter("ExactDate takes a ms timestamp") from None
        raise _bad_filter('date value must be ["ExactDate","<ms>"], ["Today"], ["Yesterday"] or ["Tomorrow"]')

    # ---- custom bot --------------------------------------------------------------------------------
    def _bot(self, token: str, body: bytes) -> _Answer:
        def fail(code: int, msg: str) -> _Answer:
            return self._json(200, {"code": code, "data": {}, "msg": msg})

        bot = self._bots.get(token)
        if bot is None:
            # not in the reference sheet: the code for an unknown webhook token
            return fail(19001, "param invalid: incoming webhook access token invalid")
        if len(body) > BOT_MAX_BODY:
            return fail(9499, "Bad Request")  # not in the reference sheet: the code for an oversized body
        try:
            data = _parse_body(body)
        except ApiError:
            return fail(9499, "Bad Request")
        if bot.secret is not None:
            ts, sign = data.get("timestamp"), data.get("sign")
            try:
                fresh = abs(time.time() - int(ts)) <= 3600  # type: ignore[arg-type]
            except (TypeError, ValueError):
                fresh = False
            if (
                not isinstance(ts, str)
                or not isinstance(sign, str)
                or not fresh
                or not hmac.compare_digest(sign, bot_sign(ts, bot.secret))
            ):
                return fail(19021, "sign match fail or timestamp is not within one hour from current time")
        msg_type = data.get("msg_type")
        content = data.get("content")
        if msg_type == "text":
            ok = isinstance(content, dict) and isinstance(content.get("text"), str)
        elif msg_type == "post":
            ok = isinstance(content, dict) and isinstance(content.get("post"), dict)
        elif msg_type == "interactive":
            ok = isinstance(data.get("card"), dict)
        else:
            ok = False  # not in the reference sheet: other msg types (image, share_chat) are not emulated
        if not ok:
            return fail(9499, "Bad Request")
        if self.rate_limits:
            now = self.clock()
            while bot.sent and bot.sent[0] <= now - 60.0:
                bot.sent.popleft()
            for window, limit in BOT_LIMITS:
                if sum(1 for t in bot.sent if t > now - window) >= limit:
                    return fail(11232, "frequency limited")
            bot.sent.append(now)  # not in the reference sheet: rejected messages do not count
        bot.messages.append(data)
        return self._json(200, dict(BOT_SUCCESS))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """A stopped server answers nobody: kept-alive connections are cut too, not only the listener."""
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that timed out or hung up is not an emulator error
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FeishuEmulator/1.0"
    timeout = 60  # an idle keep-alive connection must not pin a thread forever

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:  # type: ignore[attr-defined]
            self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        with self.server.connections_lock:  # type: ignore[attr-defined]
            self.server.connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        emulator: FeishuEmulator = self.server.emulator  # type: ignore[attr-defined]
        answer = emulator._handle(method, self.path, self.headers, body)
        if answer.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("X-Tt-Logid", uuid.uuid4().hex)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.feishu.emulator", description="Serve a fake Feishu Open Platform on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--app-token", default="bascnTEST")
    parser.add_argument("--table-id", default="tblTEST")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--app-id", default="cli_test")
    parser.add_argument("--app-secret", default="test-secret")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rate-limits", action="store_true")
    args = parser.parse_args(argv)
    emu = FeishuEmulator(
        app_id=args.app_id,
        app_secret=args.app_secret,
        seed=args.seed,
        latency=args.latency,
        rate_limits=not args.no_rate_limits,
        port=args.port,
    )
    # a background job starts with SIGINT ignored: SIGTERM is the stop signal it always receives
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    emu.start()
    emu.add_table(args.app_token, args.table_id)
    print(f"FEISHU_DOMAIN={emu.url}", flush=True)
    print(f"FEISHU_APP_ID={emu.app_id}", flush=True)
    print(f"FEISHU_APP_SECRET={emu.app_secret}", flush=True)
    print(f"FEISHU_APP_TOKEN={args.app_token}", flush=True)
    print(f"FEISHU_TABLE_ID={args.table_id}", flush=True)
    print("serving; Ctrl-C or SIGTERM to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
