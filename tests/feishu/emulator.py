"""A fake Feishu Open Platform (auth, Bitable records/fields, custom bot) over real HTTP on loopback.

Drive it through the real lark-oapi SDK with ``domain(emu.url)``. It answers as the official Feishu docs say; the
table "Rules and their sources" names the page behind every rule it enforces (pages on open.feishu.cn, the same
pages as open.larkoffice.com). What the docs leave open is listed under "Assumptions" and marked in the code with
``# assumption:``. Where a test and this emulator disagree with the docs, the docs win.

Public API
----------
``FeishuEmulator(app_id="cli_test", app_secret="test-secret", seed=0, latency=0.0, rate_limits=True, port=0)``
    ``start()`` / ``stop()`` / ``with``; ``url``, ``port``.
    ``add_table(app_token, table_id, fields=None)``: fields are ``(name, type[, property])`` tuples
    (``DEFAULT_FIELDS`` when None); ``insert_rows(app_token, table_id, rows) -> ids``;
    ``rows(app_token, table_id) -> {record_id: fields}``; ``fields(app_token, table_id) -> [field json]``;
    ``calls`` (list of ``Call``), ``count(endpoint=None, code=None)``, ``reset_calls()``; ``expire_tokens()``;
    ``add_bot(token, secret=None)``, ``bot_messages(token)``.
    ``add_fault(kind, endpoint=None, times=None, probability=None, landed=False)`` and ``clear_faults()``.
Constants: ``ERRORS`` (code -> (HTTP status, msg)), ``BATCH_GET_STATUS`` (batch_get's own statuses),
``DATE_FORMATTERS``, ``DEFAULT_FIELDS`` (the service's table; its date columns show "yyyy/MM/dd HH:mm"),
``ENDPOINTS``, ``FAULT_KINDS``, ``bot_sign(timestamp, secret)``. CLI: ``python -m tests.feishu.emulator --help``.

Settings (plain attributes; change them at any time):
    ``latency: float | dict[str, float]``  seconds every call takes, or per endpoint (``{"batch_update": 0.5}``;
                                  others then take none). A write holds its table that long.
    ``rate_limits: bool``         enforce the per-endpoint rate limits (HTTP 429, 99991400). Default True.
    ``clock: () -> float``        seconds for rate windows and token lifetimes; replace it to freeze time.
    ``repeat_token_answer: str``  what a ``batch_create`` whose ``client_token`` already created rows answers,
                                  writing nothing: ``"original"`` (the first answer again; the default),
                                  ``"1254608"`` (HTTP 403) or ``"1255006"`` (HTTP 400). The docs name all three.
    ``read_conflicts: bool``      when True, a read (``search``, ``batch_get``, ``fields_list``) that arrives
                                  while a write on the same table is in flight answers 1254291, as a second
                                  write always does. Default False, so ordinary tests stay deterministic;
                                  the fault suites turn it on.
    ``monthly_quota: int | None`` Bitable calls the tenant may still make this month. Each Bitable call that
                                  passes the token check spends one, given back when it is answered with a 4xx or
                                  5xx status; at 0 every Bitable call answers 99991403 (HTTP 429).
                                  None (the default): no quota. The token endpoint and bots do not spend it.
    ``max_response_bytes: int | None``  a ``search`` or ``batch_get`` whose JSON answer would be larger answers
                                  1254030 TooLargeResponse instead. None (the default): no limit.

Fault kinds (``add_fault``): ``kind`` is a name below or any code of ``ERRORS`` as a string (``"1254002"``),
which answers that code with the HTTP status its page gives for the endpoint:
    ``"rate_limit"``   HTTP 429, 99991400, with ``x-ogw-ratelimit-*`` headers (same as ``"99991400"``);
    ``"conflict"``     1254291; ``"not_ready"`` 1254607 (HTTP 400); ``"too_many"`` 1254290;
    ``"timeout_code"`` 1255040 (HTTP 504);
    ``"failed"``       1254002 with HTTP 200 (the docs: an occasional 1254002 is a server timeout to retry);
    ``"1255001"`` … ``"1255005"``  InternalError, RpcError, MarshalError, UmMarshalError, ConvError, HTTP 200;
    ``"server_error"`` HTTP 500 carrying 1255001 (a gateway's 5xx: an assumption);
    ``"html_502"``     HTTP 502 with an HTML body (not JSON);
    ``"lost_answer"``  the call is carried out, then the connection is closed without an answer;
    ``"token_expired"`` every token issued so far is forgotten, so this call (and every later one made with an old
                       token) answers 99991663;
    ``"99991661"``, ``"99991663"``, ``"99991664"``, ``"99991668"``  this call answers that token code and every
                       token issued so far is forgotten: a retry must fetch a new token;
    ``"quota"``        99991403: the tenant's monthly quota is used up (same as ``"99991403"``; see
                       ``monthly_quota`` for a budget).
    ``endpoint`` limits the fault to one of ``ENDPOINTS`` (None: every Bitable endpoint, not token or bot);
    ``times`` fires it that many times then removes it (None: forever); ``probability`` fires it on that share of
    matching calls (the seeded RNG). ``landed=True`` carries the call out first (a write lands, a create's
    ``client_token`` is remembered) and then answers the fault: a write that landed but was answered with a
    failure. If the call itself fails, nothing lands and the fault still answers. Kinds that stop a call
    before it is served (token kinds, ``rate_limit``, ``quota``, ``lost_answer``) cannot be ``landed``.

Rules and their sources
-----------------------
Pages (paths on open.feishu.cn/document/uAjLw4CM/ukTMukTMukTM/reference/bitable-v1/ unless a full path is given):
    [filter]   记录筛选参数填写说明 (Record filter guide)      app-table-record/record-filter-guide
    [search]   查询记录 (Search records)                      app-table-record/search
    [create]   新增多条记录 (Create records)                  app-table-record/batch_create
    [update]   更新多条记录 (Update records)                  app-table-record/batch_update
    [delete]   删除多条记录 (Delete records)                  app-table-record/batch_delete
    [get]      批量获取记录 (Batch get records)               app-table-record/batch_get
    [record]   多维表格记录数据结构 (Base record data structure) app-table-record/bitable-record-data-structure-overview
    [fields]   字段编辑指南 (Field editing guide)             app-table-field/guide
    [rate]     频控策略 (Frequency control)                   /document/ukTMukTMukTM/uUzN04SN3QjL1cDN
    [token]    自建应用获取 tenant_access_token                /document/server-docs/authentication-management/
                                                              access-token/tenant_access_token_internal
    [codes]    通用错误码 (Generic error codes)               /document/server-docs/api-call-guide/generic-error-code
    [quota]    自建应用 API 调用量上限调整说明 (Custom app API call limit)
                                                              /document/platform-notices/platform-updates-/custom-app-api-call-limit
    [bot]      自定义机器人使用指南 (Custom bot guide)         /document/client-docs/bot-v3/add-custom-bot
    [sdk]      lark-oapi: api/bitable/v1/model/batch_delete_app_table_record_response_body.py, delete_record.py

| rule                                                                   | code (HTTP)            | source            |
|------------------------------------------------------------------------|------------------------|-------------------|
| each error code answers with the HTTP status its page's error table    | see ERRORS             | each page         |
| gives (ERRORS)                                                         |                        |                   |
| batch_get uses its own table: 404 for the not-found codes, 500 for     | see table              | [get]             |
| conversion and internal codes (BATCH_GET_STATUS)                       |                        |                   |
| date and created-time filters take only is, isEmpty, isNotEmpty,       | 1254018 (200)          | [filter] [search] |
| isGreater, isLess                                                      |                        |                   |
| like and in are "not supported yet"                                    | 1254018 (200)          | [filter] [search] |
| text and number values: one element; isEmpty and isNotEmpty take []    | 1254018 (200)          | [filter]          |
| single select: is and isNot one element, contains and doesNotContain   | 1254018 (200)          | [filter]          |
| several, isEmpty and isNotEmpty []                                     |                        |                   |
| dates: ["ExactDate", "<ms>"] or one of Today, Tomorrow, Yesterday,     | 1254018 (200)          | [filter]          |
| CurrentWeek, LastWeek, CurrentMonth, LastMonth, TheLastWeek,           |                        |                   |
| TheNextWeek, TheLastMonth, TheNextMonth; the week and month words only |                        |                   |
| with is                                                                |                        |                   |
| ExactDate filters by the day of the timestamp (its zero hour in the    |                        | [filter]          |
| document's time zone)                                                  |                        |                   |
| value must be given, [] when empty ("otherwise a missing value error") | 1254018 (200)          | [filter]          |
| conjunction is required, "and" or "or"                                 | 1254018 (200)          | [search]          |
| one level of children only ("nested use is not supported")             | 1254018 (200)          | [filter]          |
| at most 50 conditions in a list, at most 10 values in a condition      | 99992402 (400)         | [search]          |
| the filter at most 2,000 characters (FilterLengthExceedLimit)          | 1254107 (200)          | [search]          |
| the sort at most 1,000 characters (SortLengthExceedLimit) and 100 keys | 1254108 (200)          | [search]          |
| field_names must name columns of the table (InvalidFieldNames), at     | 1254024 (200)          | [search]          |
| most 200                                                               |                        |                   |
| page_size at most 500, default 20; 0 or less answers 1254011           | 1254011 (400)          | [search]          |
| a bad page_token answers 1254002 (its troubleshooting names "an        | 1254002 (200)          | [create]          |
| invalid page_token")                                                   |                        |                   |
| an answer too large to return (TooLargeResponse): past                 | 1254030 (200)          | [search]          |
| max_response_bytes                                                     |                        |                   |
| batch limits: create 1,000, update 1,000, delete 500, get 100 records  | 1254104 (200)          | each page         |
| client_token must be a UUIDv4                                          | 1254037 (400)          | [create]          |
| a reused client_token: the original answer, 1254608 or 1255006         | 1254608 (403) 1255006  | [create]          |
| (repeat_token_answer)                                                  | (400)                  |                   |
| one write at a time per table (writes: records and fields); reads too  | 1254291 (200)          | every page        |
| with read_conflicts                                                    |                        |                   |
| 1254002 and 1255001-1255005 come with HTTP 200; an occasional 1254002  | (200)                  | [create] [search] |
| is a server timeout to retry                                           |                        |                   |
| 1254607 Data not ready and 1255040 request timeout                     | (400), (504)           | every page        |
| unknown column on write (FieldNameNotFound)                            | 1254045 (200)          | [create]          |
| text takes a string, number a number, single select an option name (a  | 1254060-1254064 (200)  | [create] [record] |
| new name adds an option), date a ms timestamp                          |                        |                   |
| a text cell at most 100,000 characters (TooLargeCell)                  | 1254130 (200)          | [create]          |
| an unknown record id fails the whole update (RecordIdNotFound); an     | 1254043 1254041 (200)  | [update] [delete] |
| unknown table (TableIdNotFound)                                        |                        |                   |
| batch_get lists ids it did not find in absent_record_ids               |                        | [get]             |
| batch_delete answers per record: records: [{"deleted": true,           |                        | [delete] [sdk]    |
| "record_id": ...}]                                                     |                        |                   |
| search reads text as [{"type": "text", "text": ...}] segments; empty   |                        | [search] [record] |
| cells are left out                                                     |                        |                   |
| date column property: date_formatter one of DATE_FORMATTERS (default   | 1254001 (200)          | [fields]          |
| "yyyy/MM/dd"), auto_fill a boolean (default false); the fields list    |                        |                   |
| answers both                                                           |                        |                   |
| number column property: formatter one of NUMBER_FORMATTERS             | 1254001 (200)          | [fields]          |
| rate limits: create, update, delete 50/s; search, get 20/s; HTTP 429   | 99991400 (429)         | each page, [rate] |
| with x-ogw-ratelimit-limit and x-ogw-ratelimit-reset                   |                        |                   |
| token: {code, msg, tenant_access_token, expire: 7200}; Bitable calls   | 99991663 (400)         | [token] [codes]   |
| need Authorization: Bearer <token>                                     |                        |                   |
| 99991661, 99991664, 99991668: token codes (fetch a new token)          | (400)                  | [codes]           |
| the monthly quota is used up: every counted call fails until the month | 99991403 (429)         | [quota]           |
| ends; calls that fail with a 4xx or 5xx status are not counted          |                        |                   |
| bot: text, post and interactive messages, body at most 20 KB,          | 9499 19021 11232       | [bot]             |
| signature, 5/s and 100/min                                             |                        |                   |


Assumptions (the docs leave these open; each is marked ``# assumption:`` where it is made)
    - Text and single select filters take is, isNot, contains, doesNotContain, isEmpty, isNotEmpty; number
      filters take is, isNot, the four comparisons, isEmpty, isNotEmpty. Other pairs answer 1254018.
    - A comparing operator given ``[]`` answers 1254018 (the guide allows "no elements" but says what they mean
      only for isEmpty and isNotEmpty). ``"value": null`` counts as missing.
    - Text compares exactly and case-sensitively; text ``contains`` is a substring test; single select
      ``contains`` means "is any of the options", ``doesNotContain`` "is none of them" (empty cells included).
    - Dates: days count in UTC+8 (Feishu's default tenant time zone); weeks run Monday to Sunday;
      TheLastWeek/TheNextWeek are the 7 days before/after today and TheLastMonth/TheNextMonth the 30 days,
      today included. An empty cell matches no comparing operator but isNot.
    - A filter's length is its JSON as the SDK writes it (``json.dumps`` defaults, ``ensure_ascii=False``);
      shape is checked before length. The 50-condition and 10-value limits and other "data validation rules"
      answer the gateway's 99992402 (HTTP 400), as bad query parameters do (``page_size`` over 500).
    - An unknown sort column answers 1254016 InvalidSort; an empty "or" matches everything; empty cells sort last.
    - Business errors carry ``{"code", "msg", "error": {"log_id", "message"}}``; codes no page lists answer HTTP 200.
    - batch_create and batch_update take 1,000 records (the current pages; an older English copy says 500).
    - Field create: "yyyy/MM/dd HH:mm" is a date formatter: the field guide's own request example uses it, though
      its list names "yyyy-MM-dd HH:mm". A bad property answers 1254001, a taken name 1254014.
    - Client tokens are remembered per table, only for a create that landed; a reused token answers per
      ``repeat_token_answer`` whatever the body.
    - batch_delete with one unknown id fails whole with 1254043, like batch_update.
    - ``max_response_bytes`` applies to reads only (``search``, ``batch_get``).
    - HTTP statuses of the generic codes: 99991661/99991663/99991664/99991668 answer HTTP 400. A call
      with no ``Authorization`` header answers 99991661, one with an unknown token 99991663. Bad app credentials
      answer 10014.
    - Rate windows are per endpoint for the whole app; rejected calls do not count; checks run in the order
      token, quota, faults, rate limit, table lock. The quota counts every Bitable call that passes the token
      check, including calls then answered with an error.
    - A null value empties a cell; date values must be integers; formula and created-time columns are read-only.
    - Every token fetch issues a new token; old ones stay valid until they expire.
    - Unknown paths answer HTTP 404; a body that is not a JSON object answers 9499.
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
import re
import signal
import socket
import string
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "BATCH_GET_STATUS",
    "DATE_FORMATTERS",
    "DEFAULT_FIELDS",
    "ENDPOINTS",
    "ERRORS",
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
# [fields]: the date formats a date (or created time) column may show; the last is the guide's own example
DATE_FORMATTERS = frozenset({"yyyy/MM/dd", "yyyy-MM-dd HH:mm", "MM-dd", "MM/dd/yyyy", "dd/MM/yyyy", "yyyy/MM/dd HH:mm"})
NUMBER_FORMATTERS = frozenset(
    {"0", "0.0", "0.00", "0.000", "0.0000", "1,000", "1,000.00", "%", "0.00%", "¥", "¥0.00", "$", "$0.00"}
)
DATE_AND_TIME = {"date_formatter": "yyyy/MM/dd HH:mm", "auto_fill": False}

# the service's table, its date columns date-and-time as the service creates them
DEFAULT_FIELDS: list[tuple] = [
    ("Identifier", TEXT),
    (
        "Status",
        SINGLE_SELECT,
        {"options": [{"name": n} for n in ("PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED")]},
    ),
    ("Payload", TEXT),
    ("CreatedAt", DATE, DATE_AND_TIME),
    ("Priority", NUMBER),
    ("Attempts", NUMBER),
    ("ClaimedAt", DATE, DATE_AND_TIME),
    ("Result", TEXT),
    ("Error", TEXT),
    ("FinishedAt", DATE, DATE_AND_TIME),
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
# every page: "the writing interface includes adding, modifying and deleting records; ... fields"
WRITE_ENDPOINTS = frozenset({"batch_create", "batch_update", "batch_delete", "fields_create"})
READ_ENDPOINTS = frozenset({"search", "batch_get", "fields_list"})

# code -> (HTTP status, msg) as the record pages' error tables give them ([create] [update] [delete] [search])
ERRORS: dict[int, tuple[int, str]] = {
    1254000: (200, "WrongRequestJson"),
    1254001: (200, "WrongRequestBody"),
    1254002: (200, "Fail"),
    1254011: (400, "Page size must greater than 0."),
    1254014: (200, "FieldNameDuplicated"),  # assumption: the field create page's code for a taken name
    1254016: (200, "InvalidSort"),
    1254018: (200, "InvalidFilter"),
    1254024: (200, "InvalidFieldNames"),
    1254030: (200, "TooLargeResponse"),
    1254037: (400, "Invalid client token, make sure that it complies with the specification."),
    1254041: (200, "TableIdNotFound"),
    1254043: (200, "RecordIdNotFound"),
    1254045: (200, "FieldNameNotFound"),
    1254060: (200, "TextFieldConvFail"),
    1254061: (200, "NumberFieldConvFail"),
    1254062: (200, "SingleSelectFieldConvFail"),
    1254064: (200, "DatetimeFieldConvFail"),
    1254104: (200, "RecordAddOnceExceedLimit"),
    1254107: (200, "FilterLengthExceedLimit"),
    1254108: (200, "SortLengthExceedLimit"),
    1254130: (200, "TooLargeCell"),
    1254290: (200, "TooManyRequest"),
    1254291: (200, "Write conflict"),
    1254607: (400, "Data not ready, please try again later"),
    1254608: (403, "Same API requests are submitted repeatedly."),
    1255001: (200, "InternalError"),
    1255002: (200, "RpcError"),
    1255003: (200, "MarshalError"),
    1255004: (200, "UmMarshalError"),
    1255005: (200, "ConvError"),
    1255006: (400, "Client token conflict, please generate a new client token and try again."),
    1255040: (504, "Request timed out, please try again later"),
    9499: (400, "Bad Request"),  # assumption: the code for a missing or malformed body
    99991400: (429, "request trigger frequency limit"),  # [rate]
    99991403: (429, "This month's API call quota has been exceeded."),  # [quota]
    # assumption: the generic codes' HTTP status
    99991661: (400, "Missing access token for authorization. Please make a request with token attached."),
    99991663: (400, "Invalid access token for authorization. Please make a request with token attached."),
    99991664: (400, "Invalid tenant access token."),
    99991668: (400, "Invalid access token for authorization. Please make a request with token attached."),
    99992402: (400, "field validation failed"),  # assumption: the gateway's answer to a broken validation rule
}
# [get]: batch_get's error table gives other statuses for the same codes
BATCH_GET_STATUS = {
    1254000: 400,
    1254001: 400,
    1254002: 500,
    1254016: 400,
    1254018: 400,
    1254024: 400,
    1254030: 400,
    1254041: 404,
    1254043: 404,
    1254045: 404,
    1254060: 500,
    1254061: 500,
    1254062: 500,
    1254064: 500,
    1254104: 400,
    1254107: 400,
    1254108: 400,
    1254130: 400,
    1254290: 400,
    1254291: 400,
    1254607: 500,
    1255001: 500,
    1255002: 500,
    1255003: 500,
    1255004: 500,
    1255005: 500,
    1255040: 504,
}
NAMED_FAULTS = {
    "rate_limit": 99991400,
    "conflict": 1254291,
    "not_ready": 1254607,
    "too_many": 1254290,
    "timeout_code": 1255040,
    "failed": 1254002,
    "quota": 99991403,
}
TOKEN_CODES = frozenset({99991661, 99991663, 99991664, 99991668})
FAULT_KINDS = frozenset(
    {*NAMED_FAULTS, "server_error", "html_502", "lost_answer", "token_expired", *(str(c) for c in ERRORS)}
)
TOKEN_FAULTS = frozenset({"token_expired", *(str(c) for c in TOKEN_CODES)})
# these stop a call before it is served: none of them can follow a call that landed
UNLANDABLE_FAULTS = TOKEN_FAULTS | {"rate_limit", "99991400", "quota", "99991403", "lost_answer"}

BATCH_LIMITS = {"batch_create": 1000, "batch_update": 1000, "batch_delete": 500, "batch_get": 100}
# assumption: one window per endpoint for the whole app (the pages give a rate per call)
RATE_LIMITS = {"batch_create": 50, "batch_update": 50, "batch_delete": 50, "batch_get": 20, "search": 20}
BOT_LIMITS = ((1.0, 5), (60.0, 100))
BOT_MAX_BODY = 20 * 1024
TOKEN_TTL = 7200
MAX_TEXT = 100_000
MAX_FIELDS = 300
MAX_FILTER_JSON = 2000
MAX_SORT_JSON = 1000
MAX_SORT_KEYS = 100
MAX_FIELD_NAMES = 200
MAX_CONDITIONS = 50
MAX_VALUES = 10
MAX_SEARCH_PAGE = 500
MAX_FIELDS_PAGE = 100  # assumption: the fields list page size cap
# assumption: date filters count days in UTC+8, Feishu's default tenant time zone
FILTER_TZ = timezone(timedelta(hours=8))
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE)

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
NOT_SUPPORTED_YET = frozenset({"like", "in"})
EMPTINESS = frozenset({"isEmpty", "isNotEmpty"})
COMPARISONS = frozenset({"isGreater", "isGreaterEqual", "isLess", "isLessEqual"})
TEXT_OPERATORS = frozenset({"is", "isNot", "contains", "doesNotContain"}) | EMPTINESS
# [filter]: dates take only these five; the others by type are assumptions
DATE_OPERATORS = frozenset({"is", "isGreater", "isLess"}) | EMPTINESS
TYPE_OPERATORS = {
    TEXT: TEXT_OPERATORS,
    SINGLE_SELECT: TEXT_OPERATORS,
    NUMBER: frozenset({"is", "isNot"}) | COMPARISONS | EMPTINESS,
    DATE: DATE_OPERATORS,
    CREATED_TIME: DATE_OPERATORS,
}
DAY_WORDS = frozenset({"Today", "Tomorrow", "Yesterday"})
SPAN_WORDS = frozenset(
    {
        "CurrentWeek",
        "LastWeek",
        "CurrentMonth",
        "LastMonth",
        "TheLastWeek",
        "TheNextWeek",
        "TheLastMonth",
        "TheNextMonth",
    }
)

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
    """A documented error; its HTTP status comes from ``ERRORS`` (or ``BATCH_GET_STATUS``) unless given."""

    def __init__(self, code: int, msg: str | None = None, http_status: int | None = None) -> None:
        self.code = code
        self.msg = msg if msg is not None else ERRORS.get(code, (200, "error"))[1]
        self.http_status = http_status
        super().__init__(f"{code} {self.msg}")


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
    landed: bool


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


def _status(code: int, endpoint: str) -> int:
    if endpoint == "batch_get" and code in BATCH_GET_STATUS:
        return BATCH_GET_STATUS[code]
    return ERRORS.get(code, (200, ""))[0]  # assumption: a code no page lists answers HTTP 200


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
    """The request's JSON object; no body or a non-object answers 9499 (search without a body does)."""
    if not body:
        raise ApiError(9499)
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(9499) from None  # assumption: malformed JSON
    if not isinstance(data, dict):
        raise ApiError(9499)  # assumption
    return data


def _wrong_body(what: str) -> ApiError:
    return ApiError(1254001, f"WrongRequestBody: {what}")  # assumption: the code for a bad body shape


def _invalid(what: str) -> ApiError:
    # assumption: a broken "data validation rule" of a page answers the gateway's 99992402
    return ApiError(99992402, f"field validation failed: {what}")


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
        offset = None
    if not isinstance(offset, int) or offset < 0:
        # [create]: 1254002's troubleshooting names "an invalid page_token" when paging a query
        raise ApiError(1254002, "Fail: invalid page_token")
    return offset


def _page_size(query: dict[str, str], default: int, maximum: int) -> int:
    raw = query.get("page_size")
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        raise _invalid("page_size") from None
    if size < 1:
        raise ApiError(1254011)  # [search]
    if size > maximum:
        raise _invalid("page_size")
    return size


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, FILTER_TZ).date()


def _span(word: str, today: date) -> tuple[date, date]:
    """The days a relative date word covers, first and last included."""
    if word in ("CurrentWeek", "LastWeek"):  # assumption: weeks run Monday to Sunday
        monday = today - timedelta(days=today.weekday()) - timedelta(weeks=word == "LastWeek")
        return monday, monday + timedelta(days=6)
    if word == "CurrentMonth":
        first = today.replace(day=1)
    elif word == "LastMonth":
        first = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    else:  # assumption: the last/next 7 or 30 days, today included
        days = 7 if word.endswith("Week") else 30
        if word.startswith("TheLast"):
            return today - timedelta(days=days - 1), today
        return today, today + timedelta(days=days - 1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


class FeishuEmulator:
    """A fake Feishu Open Platform. Thread-safe: one lock guards all state."""

    def __init__(
        self,
        app_id: str = "cli_test",
        app_secret: str = "test-secret",
        seed: int = 0,
        latency: float | dict[str, float] = 0.0,
        rate_limits: bool = True,
        port: int = 0,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.latency = latency
        self.rate_limits = rate_limits
        self.repeat_token_answer = "original"
        self.read_conflicts = False
        self.monthly_quota: int | None = None
        self.max_response_bytes: int | None = None
        # Seconds for rate windows and token lifetimes; tests may replace it to freeze time.
        self.clock: Callable[[], float] = time.monotonic
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
            try:
                for spec in specs:
                    name, ftype = spec[0], spec[1]
                    prop = spec[2] if len(spec) > 2 else None
                    self._add_field(table, name, ftype, prop)
            except ApiError as exc:
                raise ValueError(str(exc)) from None
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

    def fields(self, app_token: str, table_id: str) -> list[dict]:
        """The table's columns as the fields list answers them."""
        with self._lock:
            table = self._tables[(app_token, table_id)]
            columns = list(table.fields.values())
            return [self._field_json(f, f is columns[0]) for f in columns]

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
        self,
        kind: str,
        endpoint: str | None = None,
        times: int | None = None,
        probability: float | None = None,
        landed: bool = False,
    ) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (None: forever), not {times}")
        if landed and kind in UNLANDABLE_FAULTS:
            raise ValueError(f"a {kind!r} fault stops a call before it is served: it cannot follow a landed call")
        with self._lock:
            self._faults.append(_Fault(kind, endpoint, times, probability, landed))

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
            time.sleep(self._latency(endpoint))
            # assumption: unknown paths answer 404 with a JSON code
            return self._json(404, {"code": 404, "msg": "404 page not found"})
        drop, marked, early, after = False, None, None, None
        arrived = self.clock()  # the gateway counts arrivals: not when the lock (held by a search) comes free
        with self._lock:
            token_fault = self._pick_fault(endpoint, TOKEN_FAULTS)
            if token_fault is not None:
                self._tokens.clear()
                if token_fault.kind != "token_expired":
                    early = self._error(ApiError(int(token_fault.kind)), endpoint)
            if early is None and endpoint in BITABLE_ENDPOINTS:
                early = self._check_token(headers, endpoint)
            spent = early is None and endpoint in BITABLE_ENDPOINTS
            if spent:
                early = self._spend_quota(endpoint)
                spent = early is None
            if early is None:
                fault = self._pick_fault(endpoint, FAULT_KINDS - TOKEN_FAULTS)
                if fault is not None and fault.kind == "lost_answer":
                    drop = True
                elif fault is not None and fault.landed:
                    after = fault.kind
                elif fault is not None:
                    early = self._fault_answer(fault.kind, endpoint)
            if early is None:
                early = self._check_rate(endpoint, arrived)  # assumption: token, quota, faults, then rate
            if early is None and params in self._writing:
                if endpoint in WRITE_ENDPOINTS or (endpoint in READ_ENDPOINTS and self.read_conflicts):
                    early = self._error(ApiError(1254291), endpoint)
            if early is None and endpoint in WRITE_ENDPOINTS:
                self._writing.add(params)
                marked = params
        try:
            time.sleep(self._latency(endpoint))
            if early is not None:
                answer = early
            else:
                with self._lock:
                    answer = self._process(endpoint, params, query, headers, body)
                if after is not None:
                    answer = self._fault_answer(after, endpoint)
        finally:
            if marked is not None:
                with self._lock:
                    self._writing.discard(marked)
        if spent and self.monthly_quota is not None and answer.status >= 400:
            with self._lock:
                self.monthly_quota += 1  # [quota]: calls that fail with a 4xx or 5xx are not counted
        if endpoint in BATCH_LIMITS:
            answer.n_records = self._request_size(endpoint, body)
        answer.drop = drop
        return answer

    def _latency(self, endpoint: str) -> float:
        latency = self.latency
        return latency.get(endpoint, 0.0) if isinstance(latency, dict) else latency

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
                # assumption: an unknown app_token also answers "table not found"
                raise ApiError(1254041)
            handler = getattr(self, f"_do_{endpoint}")
            data, n_items = handler(table, query, body, params)
            if isinstance(data, bytes):
                return _Answer(200, data, 0)
            answer = self._json(200, {"code": 0, "msg": "success", "data": data})
            limit = self.max_response_bytes
            if endpoint in ("search", "batch_get") and limit is not None and len(answer.body) > limit:
                raise ApiError(1254030)  # [search]: TooLargeResponse
            answer.n_records = n_items
            return answer
        except ApiError as exc:
            return self._error(exc, endpoint)

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

    def _error(self, exc: ApiError, endpoint: str) -> _Answer:
        status = exc.http_status if exc.http_status is not None else _status(exc.code, endpoint)
        if exc.code == 99991400 or exc.code in TOKEN_CODES or exc.code in (9499, 99991403):
            return self._json(status, {"code": exc.code, "msg": exc.msg})
        # assumption: error bodies carry code, msg and an error object with a log id
        log_id = uuid.uuid4().hex[:20]  # unseeded: errors must not shift the seeded record ids
        return self._json(status, {"code": exc.code, "msg": exc.msg, "error": {"log_id": log_id, "message": exc.msg}})

    # ---- auth, quota, faults, rate limits ----------------------------------------------------------
    def _issue_token(self, body: bytes) -> dict:
        data = _parse_body(body)
        if data.get("app_id") != self.app_id or data.get("app_secret") != self.app_secret:
            raise ApiError(10014, "app secret invalid")  # assumption: the code for bad credentials
        # assumption: every fetch issues a new token (old ones stay valid until expiry)
        token = "t-" + uuid.uuid4().hex  # unseeded on purpose: two emulators never share a token
        self._tokens[token] = self.clock() + TOKEN_TTL
        return {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": TOKEN_TTL}

    def _check_token(self, headers: Any, endpoint: str) -> _Answer | None:
        auth = (headers.get("Authorization") or "").strip()
        if not auth:
            return self._error(ApiError(99991661), endpoint)  # assumption: no token at all
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        expiry = self._tokens.get(token)
        if expiry is None or expiry <= self.clock():
            return self._error(ApiError(99991663), endpoint)
        return None

    def _spend_quota(self, endpoint: str) -> _Answer | None:
        if self.monthly_quota is None:
            return None
        if self.monthly_quota <= 0:
            return self._error(ApiError(99991403), endpoint)
        self.monthly_quota -= 1
        return None

    def _pick_fault(self, endpoint: str, kinds: set | frozenset) -> _Fault | None:
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
            return fault
        return None

    def _fault_answer(self, kind: str, endpoint: str) -> _Answer:
        code = NAMED_FAULTS.get(kind) or (int(kind) if kind.isdigit() else None)
        if code == 99991400:
            return self._json(
                429,
                {"code": 99991400, "msg": ERRORS[99991400][1]},
                {"x-ogw-ratelimit-limit": str(RATE_LIMITS.get(endpoint, 50)), "x-ogw-ratelimit-reset": "1"},
            )
        if kind == "html_502":
            return _Answer(502, HTML_502, None, content_type="text/html")
        if kind == "server_error":
            return self._error(ApiError(1255001, http_status=500), endpoint)  # assumption: a gateway's 5xx
        assert code is not None, kind
        return self._error(ApiError(code), endpoint)

    def _check_rate(self, endpoint: str, arrived: float) -> _Answer | None:
        limit = RATE_LIMITS.get(endpoint)
        if not self.rate_limits or limit is None:
            return None
        window = self._windows[endpoint]
        while window and window[0] <= arrived - 1.0:
            window.popleft()
        if len(window) >= limit:
            # assumption: rejected calls do not count against the window
            reset = max(1, math.ceil(window[0] + 1.0 - arrived))
            return self._json(
                429,
                {"code": 99991400, "msg": ERRORS[99991400][1]},
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
            raise ApiError(1254014)
        if ftype not in FIELD_TYPES or isinstance(ftype, bool):
            raise _wrong_body(f"unsupported field type {ftype!r}")  # assumption: only the service's types
        if len(table.fields) >= MAX_FIELDS:
            raise _wrong_body("a table holds at most 300 fields")  # assumption: the code
        if prop is not None and not isinstance(prop, dict):
            raise _wrong_body("property")
        prop = self._field_property(ftype, copy.deepcopy(prop))
        fld = _Field(self._new_id("fld", 10), name, ftype, prop)
        table.fields[name] = fld
        table.matches.clear()
        return fld

    def _field_property(self, ftype: int, prop: dict | None) -> dict | None:
        """The property a new column keeps, checked against the field guide, with its documented defaults."""
        if ftype == SINGLE_SELECT:
            options = (prop or {}).get("options") or []
            if not isinstance(options, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in options
            ):
                raise _wrong_body("property.options")
            return {
                **(prop or {}),
                "options": [
                    {"id": self._new_id("opt", 8), "name": o["name"], "color": o.get("color", i % 55)}
                    for i, o in enumerate(options)
                ],
            }
        if ftype in (DATE, CREATED_TIME):
            kept = {"date_formatter": "yyyy/MM/dd", "auto_fill": False, **(prop or {})}  # [fields]: defaults
            if kept["date_formatter"] not in DATE_FORMATTERS:
                raise _wrong_body(f"property.date_formatter {kept['date_formatter']!r}")
            if not isinstance(kept["auto_fill"], bool):
                raise _wrong_body("property.auto_fill")
            if ftype == CREATED_TIME:
                kept.pop("auto_fill")
            return kept
        if ftype == NUMBER and prop is not None and "formatter" in prop:
            if prop["formatter"] not in NUMBER_FORMATTERS:
                raise _wrong_body(f"property.formatter {prop['formatter']!r}")
        return prop

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
                raise ApiError(1254045)
            if value is None:
                continue  # assumption: a null value empties the cell
            if fld.type == TEXT:
                if not isinstance(value, str):
                    raise ApiError(1254060)
                if len(value) > MAX_TEXT:
                    raise ApiError(1254130)
            elif fld.type == NUMBER:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ApiError(1254061)
            elif fld.type == SINGLE_SELECT:
                if not isinstance(value, str):
                    raise ApiError(1254062)
            elif fld.type == DATE:
                if isinstance(value, bool) or not isinstance(value, int):  # assumption: no floats
                    raise ApiError(1254064)
            else:
                raise _wrong_body(f"field {name!r} is read-only")  # assumption

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
            raise _wrong_body(f"{key} must be a non-empty list")  # assumption: an empty batch
        if len(items) > limit:
            raise ApiError(1254104)
        return items

    def _do_batch_create(self, table: _Table, query: dict, body: bytes, params: tuple):
        data = _parse_body(body)
        client_token = query.get("client_token") or None
        if client_token is not None and not UUID4.fullmatch(client_token):
            raise ApiError(1254037)  # [create]: "the format is a standard uuidv4"
        if client_token is not None and client_token in table.client_tokens:
            if self.repeat_token_answer == "original":
                return table.client_tokens[client_token], 0
            if self.repeat_token_answer in ("1254608", "1255006"):
                raise ApiError(int(self.repeat_token_answer))
            raise ValueError(f"repeat_token_answer {self.repeat_token_answer!r}")
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
        if client_token is not None:
            # assumption: tokens are per table and remembered only for a create that landed
            table.client_tokens[client_token] = _dumps({"code": 0, "msg": "success", "data": result})
        return result, len(out)

    def _do_batch_update(self, table: _Table, query: dict, body: bytes, params: tuple):
        records = self._list(_parse_body(body), "records", BATCH_LIMITS["batch_update"])
        for rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("record_id"), str):
                raise _wrong_body("records[].record_id")
        for rec in records:
            if rec["record_id"] not in table.records:
                raise ApiError(1254043)
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
            raise ApiError(1254043)  # assumption: delete fails whole on an unknown id, like batch_update
        for rid in ids:
            table.records.pop(rid, None)
        table.matches.clear()
        # [delete] [sdk]: one DeleteRecord per id
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
        data = _parse_body(body)
        view_id = data.get("view_id")
        if view_id is not None and not isinstance(view_id, str):
            raise _wrong_body("view_id")  # assumption: views are not emulated, all rows show
        names = data.get("field_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _wrong_body("field_names")
            if len(names) > MAX_FIELD_NAMES:
                raise _invalid(f"at most {MAX_FIELD_NAMES} field_names")
            if any(n not in table.fields for n in names):
                raise ApiError(1254024)  # [search]: InvalidFieldNames
        keys = self._sort_keys(table, data.get("sort"))
        predicate = self._compile_filter(table, data.get("filter"))
        offset = _decode_page(query.get("page_token"))
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
                rows = present + empty  # assumption: empty cells sort last either way
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
            # assumption: single select sorts by option order, like the UI
            names = [o["name"] for o in fld.property.get("options", [])]
            return names.index(value) if value in names else len(names)
        return value

    def _sort_keys(self, table: _Table, sort: Any) -> list[tuple[_Field, bool]]:
        if sort is None:
            return []
        if not isinstance(sort, list) or not all(isinstance(s, dict) for s in sort):
            raise ApiError(1254016, "InvalidSort: sort must be a list of objects")
        if len(sort) > MAX_SORT_KEYS:
            raise _invalid(f"at most {MAX_SORT_KEYS} sort keys")
        if len(json.dumps(sort, ensure_ascii=False)) > MAX_SORT_JSON:
            raise ApiError(1254108)  # [search]: SortLengthExceedLimit
        keys = []
        for s in sort:
            name, desc = s.get("field_name"), s.get("desc", False)
            if name not in table.fields or not isinstance(desc, bool | None):
                raise ApiError(1254016, f"InvalidSort: {name!r}")  # assumption: the code for an unknown column
            keys.append((table.fields[name], desc is True))
        return keys

    # ---- filter ------------------------------------------------------------------------------------
    def _compile_filter(self, table: _Table, flt: Any) -> Callable[[_Record], bool]:
        if flt is None:
            return lambda rec: True
        top = self._compile_group(table, flt, allow_children=True)
        # assumption: shape is checked before length, and length is measured as the SDK serializes it
        if len(json.dumps(flt, ensure_ascii=False)) > MAX_FILTER_JSON:
            raise ApiError(1254107)  # [search]: FilterLengthExceedLimit, 2,000 characters
        return top

    def _compile_group(self, table: _Table, group: Any, allow_children: bool) -> Callable[[_Record], bool]:
        if not isinstance(group, dict):
            raise _bad_filter("filter must be an object")
        conjunction = group.get("conjunction")
        if conjunction not in ("and", "or"):
            raise _bad_filter("conjunction must be 'and' or 'or'")  # [search]: required
        conditions = group.get("conditions") or []
        children = group.get("children") or []
        if not isinstance(conditions, list) or not isinstance(children, list):
            raise _bad_filter("conditions and children must be lists")
        if len(conditions) > MAX_CONDITIONS:
            raise _invalid(f"at most {MAX_CONDITIONS} conditions")  # [search]: conditions 0-50
        if children and not allow_children:
            raise _bad_filter("children cannot nest")  # [filter]: one layer of children only
        parts = [self._compile_condition(table, cond) for cond in conditions]
        parts += [self._compile_group(table, child, allow_children=False) for child in children]
        # plain loops, not all()/any() over a generator: a search tests every row of the table with these
        if conjunction == "and" or not parts:  # assumption: an empty "or" matches everything

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

    def _compile_condition(self, table: _Table, cond: Any) -> Callable[[_Record], bool]:
        if not isinstance(cond, dict):
            raise _bad_filter("condition must be an object")
        fld = table.fields.get(cond.get("field_name"))
        if fld is None:
            raise _bad_filter("unknown field_name")  # assumption: the code for an unknown column
        op = cond.get("operator")
        if op in NOT_SUPPORTED_YET:
            raise _bad_filter(f"{op} is not supported yet")  # [filter] [search]
        if op not in OPERATORS:
            raise _bad_filter(f"unknown operator {op!r}")
        if op not in TYPE_OPERATORS[fld.type]:
            # [filter]: dates take only is, isEmpty, isNotEmpty, isGreater, isLess; other types: assumption
            raise _bad_filter(f"operator {op} does not apply to {FIELD_TYPES[fld.type]}")
        values = cond.get("value")
        if values is None:
            raise _bad_filter("value is missing: pass [] for none")  # [filter]: "a missing value error"
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _bad_filter("value must be a list of strings")
        if len(values) > MAX_VALUES:
            raise _invalid(f"at most {MAX_VALUES} values")  # [search]: value 0-10

        def cell(rec: _Record) -> Any:
            return rec.created if fld.type == CREATED_TIME else rec.fields.get(fld.name)

        if op in EMPTINESS:
            if values:
                raise _bad_filter(f"{op} takes the empty value []")  # [filter]
            want = op == "isEmpty"
            return lambda rec: _is_empty(cell(rec)) == want
        if fld.type in (DATE, CREATED_TIME):
            first, last = self._filter_days(op, values)

            def get_day(rec: _Record) -> date | None:
                return None if _is_empty(cell(rec)) else _day(cell(rec))

            if op == "is":
                return lambda rec: (day := get_day(rec)) is not None and first <= day <= last
            if op == "isGreater":
                return lambda rec: (day := get_day(rec)) is not None and day > last
            return lambda rec: (day := get_day(rec)) is not None and day < first
        if fld.type == SINGLE_SELECT and op in ("contains", "doesNotContain"):
            if not values:
                raise _bad_filter(f"{op} needs at least one option")  # assumption
            options = frozenset(values)  # assumption: "is any of" / "is none of" the options
            if op == "contains":
                return lambda rec: cell(rec) in options
            return lambda rec: cell(rec) not in options
        if len(values) != 1:
            # [filter]: text and number take one element, single select's is/isNot one; [] here: assumption
            raise _bad_filter(f"{op} on {FIELD_TYPES[fld.type]} takes exactly one value")
        if fld.type == NUMBER:
            try:
                target = float(values[0])
            except ValueError:
                raise _bad_filter("number value must be numeric") from None
            if not math.isfinite(target):
                raise _bad_filter("number value must be finite")
            return self._comparison(op, lambda rec: None if _is_empty(cell(rec)) else cell(rec), target)
        target_s = values[0]
        # assumption: text and single select compare exactly (case-sensitive); text contains is a substring test
        if op == "is":
            return lambda rec: not _is_empty(cell(rec)) and cell(rec) == target_s
        if op == "isNot":
            return lambda rec: _is_empty(cell(rec)) or cell(rec) != target_s
        if op == "contains":
            return lambda rec: not _is_empty(cell(rec)) and target_s in cell(rec)
        return lambda rec: _is_empty(cell(rec)) or target_s not in cell(rec)

    @staticmethod
    def _comparison(op: str, get: Any, target: Any) -> Callable[[_Record], bool]:
        # assumption: an empty cell matches only isNot among the comparing operators
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
    def _filter_days(op: str, values: list[str]) -> tuple[date, date]:
        """The first and last day a date condition's value names ([filter]: the date value table)."""
        today = datetime.now(FILTER_TZ).date()
        if len(values) == 2 and values[0] == "ExactDate":
            try:
                day = _day(int(values[1]))
            except (ValueError, OverflowError, OSError):
                raise _bad_filter("ExactDate takes a ms timestamp") from None
            return day, day
        if len(values) == 1 and values[0] in DAY_WORDS:
            day = today + timedelta(days={"Today": 0, "Tomorrow": 1, "Yesterday": -1}[values[0]])
            return day, day
        if len(values) == 1 and values[0] in SPAN_WORDS:
            if op != "is":
                raise _bad_filter(f"{values[0]} takes only the operator is")  # [filter]
            return _span(values[0], today)
        raise _bad_filter('a date value is ["ExactDate", "<ms>"] or one word such as ["Today"]')

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
    parser.add_argument("--read-conflicts", action="store_true", help="a read overlapping a write answers 1254291")
    parser.add_argument("--monthly-quota", type=int, default=None, help="Bitable calls before 99991403")
    parser.add_argument("--max-response-bytes", type=int, default=None, help="larger reads answer 1254030")
    args = parser.parse_args(argv)
    emu = FeishuEmulator(
        app_id=args.app_id,
        app_secret=args.app_secret,
        seed=args.seed,
        latency=args.latency,
        rate_limits=not args.no_rate_limits,
        port=args.port,
    )
    emu.read_conflicts = args.read_conflicts
    emu.monthly_quota = args.monthly_quota
    emu.max_response_bytes = args.max_response_bytes
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
