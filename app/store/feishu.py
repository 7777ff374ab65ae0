"""The vendor edge: Bitable calls through lark-oapi, with retries, and Feishu codes turned into our errors.

Nothing outside this module sees a Feishu code, an SDK type or a lark exception.
"""

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import lark_oapi as lark
import requests
from lark_oapi.api.bitable.v1 import (
    AppTableField,
    BatchCreateAppTableRecordRequest,
    BatchDeleteAppTableRecordRequest,
    BatchDeleteAppTableRecordRequestBody,
    BatchGetAppTableRecordRequest,
    BatchGetAppTableRecordRequestBody,
    BatchUpdateAppTableRecordRequest,
    CreateAppTableFieldRequest,
    ListAppTableFieldRequest,
    SearchAppTableRecordRequest,
    SearchAppTableRecordRequestBody,
)
from lark_oapi.core.exception import ObtainAccessTokenException
from lark_oapi.core.token.manager import TokenManager
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from app.errors import StoreRejected, StoreUnavailable
from app.metrics import FEISHU_CALLS, FEISHU_LATENCY, FEISHU_RETRIES

log = logging.getLogger(__name__)

_RATE_LIMITED = 99991400
_TOKEN_INVALID = 99991663
_RETRY_CODES = {
    _RATE_LIMITED: "rate limited",
    1254290: "too many requests",
    1254291: "write conflict",
    1254607: "data not ready",
    1255040: "request timed out",
}
_ALREADY_APPLIED = 1254608  # a repeated client_token
_RECORD_MISSING = 1254043
_PERMANENT_HINTS = {
    1254041: "the table was not found: check FEISHU_BITABLE_APP_TOKEN and FEISHU_BITABLE_TABLE_ID",
    1254045: "a column named in the write does not exist: run `python -m app setup-bitable`",
    1254104: "batch too large",
    1254130: "a cell is too large",
    1254018: "invalid search filter",
    1254107: "search filter too long",
}


class _Retry(Exception):
    """A failure that another try may fix."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class AlreadyApplied(Exception):
    """The client_token was used before: the write already happened."""


class RecordMissing(Exception):
    """A batch named a record id the table does not have; the whole batch was refused."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: int


@dataclass(slots=True)
class Page:
    records: list[tuple[str, dict[str, Any]]]
    page_token: str | None
    total: int | None


class FeishuTable:
    """One Bitable table, reached through the real SDK's async methods."""

    def __init__(
        self,
        client: lark.Client,
        app_token: str,
        table_id: str,
        *,
        attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ):
        self._client = client
        self._records = client.bitable.v1.app_table_record
        self._fields = client.bitable.v1.app_table_field
        self.app_token = app_token
        self.table_id = table_id
        self._attempts = attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self.calls = 0  # every HTTP attempt to the Bitable API, for tests and benchmarks

    @classmethod
    def build(
        cls,
        app_id: str,
        app_secret: str,
        app_token: str,
        table_id: str,
        domain: str,
        timeout: float,
        log_level: str = "WARNING",
        **retry: Any,
    ) -> "FeishuTable":
        client = (
            lark.Client.builder()
            .app_id(app_id)
            .app_secret(app_secret)
            .domain(domain)
            .timeout(timeout)
            .log_level(lark.LogLevel[log_level.upper()])
            .build()
        )
        return cls(client, app_token, table_id, **retry)

    # ---- calls ----------------------------------------------------------------------------------

    def _builder(self, request_type: Any) -> Any:
        return request_type.builder().app_token(self.app_token).table_id(self.table_id)

    async def list_fields(self) -> list[Field]:
        fields, token = [], None
        while True:
            builder = self._builder(ListAppTableFieldRequest).page_size(100)
            if token:
                builder = builder.page_token(token)
            data = await self._call("fields_list", self._fields.alist, builder.build())
            fields += [Field(item.field_name, item.type) for item in data.items or []]
            if not data.has_more:
                return fields
            token = data.page_token

    async def create_field(self, name: str, type_: int, prop: dict[str, Any] | None = None) -> None:
        body = AppTableField({"field_name": name, "type": type_, **({"property": prop} if prop else {})})
        request = self._builder(CreateAppTableFieldRequest).request_body(body).build()
        await self._call("fields_create", self._fields.acreate, request)

    async def batch_create(self, rows: list[dict[str, Any]], client_token: str) -> list[tuple[str, dict[str, Any]]]:
        """Create rows; raise AlreadyApplied when the token was seen before without the original answer."""
        request = self._builder(BatchCreateAppTableRecordRequest).client_token(client_token).build()
        request.body = {
            "records": [{"fields": row} for row in rows]
        }  # a plain dict: the typed body costs 18x to marshal
        data = await self._call("batch_create", self._records.abatch_create, request, special={_ALREADY_APPLIED})
        return _records(data.records)

    async def batch_update(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Update rows; raise RecordMissing when one record id is unknown (nothing is applied then)."""
        request = self._builder(BatchUpdateAppTableRecordRequest).build()
        request.body = {"records": [{"record_id": record_id, "fields": fields} for record_id, fields in rows]}
        await self._call("batch_update", self._records.abatch_update, request, special={_RECORD_MISSING})

    async def batch_delete(self, record_ids: list[str]) -> None:
        body = BatchDeleteAppTableRecordRequestBody({"records": record_ids})
        request = self._builder(BatchDeleteAppTableRecordRequest).request_body(body).build()
        await self._call("batch_delete", self._records.abatch_delete, request, special={_RECORD_MISSING})

    async def batch_get(self, record_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        body = BatchGetAppTableRecordRequestBody({"record_ids": record_ids})
        request = self._builder(BatchGetAppTableRecordRequest).request_body(body).build()
        return _records((await self._call("batch_get", self._records.abatch_get, request)).records)

    async def search(
        self,
        *,
        filter_: dict[str, Any] | None = None,
        sort: list[dict[str, Any]] | None = None,
        field_names: list[str] | None = None,
        page_size: int = 500,
        page_token: str | None = None,
    ) -> Page:
        body: dict[str, Any] = {}  # never absent: a search with no body answers 9499
        if filter_:
            body["filter"] = filter_
        if sort:
            body["sort"] = sort
        if field_names:
            body["field_names"] = field_names
        builder = self._builder(SearchAppTableRecordRequest).page_size(page_size)
        builder = builder.request_body(SearchAppTableRecordRequestBody(body))
        if page_token:
            builder = builder.page_token(page_token)
        data = await self._call("search", self._records.asearch, builder.build())
        return Page(
            records=_records(data.items), page_token=data.page_token if data.has_more else None, total=data.total
        )

    # ---- the edge -------------------------------------------------------------------------------

    async def _call(
        self, endpoint: str, method: Callable[[Any], Awaitable[Any]], request: Any, special: set[int] | None = None
    ) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            before_sleep=lambda _: FEISHU_RETRIES.labels(endpoint).inc(),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(endpoint, method, request, special)
        except _Retry as exc:
            raise StoreUnavailable(
                f"Feishu {endpoint} failed {self._attempts} times; last: {exc.reason}",
                retry_after=max(1, math.ceil(exc.wait or self._next_backoff())),
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, endpoint: str, method: Callable, request: Any, special: set[int] | None) -> Any:
        await self._ensure_token()
        self.calls += 1
        started = time.perf_counter()
        try:
            response = await method(request)
        except httpx.TimeoutException:
            self._observe(endpoint, "timeout", started)
            raise _Retry(f"timed out after {time.perf_counter() - started:.1f}s") from None
        except httpx.HTTPError as exc:
            self._observe(endpoint, "transport", started)
            raise _Retry(f"connection failed: {type(exc).__name__}") from None
        except ValueError as exc:  # a gateway's HTML page instead of JSON; the SDK's unmarshal errors too
            self._observe(endpoint, "not_json", started)
            raise _Retry(f"answer was not Feishu JSON ({type(exc).__name__})") from None
        status = response.raw.status_code if response.raw else 0
        code = response.code
        self._observe(endpoint, str(code), started)
        log.debug("feishu %s status=%s code=%s %.3fs", endpoint, status, code, time.perf_counter() - started)
        if code == 0:
            return response.data
        if special and code in special:
            raise AlreadyApplied() if code == _ALREADY_APPLIED else RecordMissing()
        if code == _TOKEN_INVALID:
            self._forget_token()
            raise _Retry("tenant token expired", wait=0)
        if status == 429 or code in _RETRY_CODES:
            raise _Retry(_RETRY_CODES.get(code, f"HTTP {status}"), wait=_reset_seconds(response))
        if status >= 500:
            raise _Retry(f"HTTP {status} (code {code})")
        hint = _PERMANENT_HINTS.get(code, response.msg or "")
        raise StoreRejected(f"Feishu {endpoint} refused the request: code {code}: {hint}")

    @staticmethod
    def _observe(endpoint: str, code: str, started: float) -> None:
        FEISHU_CALLS.labels(endpoint, code).inc()
        FEISHU_LATENCY.labels(endpoint).observe(time.perf_counter() - started)

    def _next_backoff(self, attempt: int | None = None) -> float:
        """The pause before try `attempt + 1` (after the last try: what a client should wait before resending)."""
        return min(self._backoff_max, self._backoff_base * 2 ** ((attempt or self._attempts) - 1))

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = self._next_backoff(state.attempt_number)
        if isinstance(exc, _Retry) and exc.wait is not None:
            return min(self._backoff_max, exc.wait)
        return backoff

    def _token_key(self) -> str:
        return f"self_tenant_token:{self._client.config.app_id}"

    async def _ensure_token(self) -> None:
        """Fetch the tenant token in a thread: the SDK fetches it with blocking `requests`."""
        if TokenManager.cache.get(self._token_key()):
            return
        try:
            await asyncio.to_thread(TokenManager.get_self_tenant_token, self._client.config)
        except ObtainAccessTokenException as exc:
            if exc.code == _RATE_LIMITED:
                raise _Retry("token endpoint rate limited") from None
            raise StoreRejected(
                f"Feishu refused the app credentials (code {exc.code}): check FEISHU_APP_ID and FEISHU_APP_SECRET"
            ) from None
        except (requests.RequestException, ValueError) as exc:
            raise _Retry(f"token fetch failed: {type(exc).__name__}") from None

    def _forget_token(self) -> None:
        TokenManager.cache.set(self._token_key(), "", 0)


def _reset_seconds(response: Any) -> float | None:
    headers = {key.lower(): value for key, value in (response.raw.headers or {}).items()} if response.raw else {}
    try:
        return float(headers["x-ogw-ratelimit-reset"])
    except (KeyError, ValueError):
        return None


def _records(records: list | None) -> list[tuple[str, dict[str, Any]]]:
    return [(record.record_id, record.fields or {}) for record in records or []]
