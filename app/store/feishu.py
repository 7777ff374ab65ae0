"""The vendor edge: Bitable calls over one pooled HTTP client, with retries, and Feishu codes turned into our errors.

Nothing outside this module sees a Feishu code, an SDK type or a lark exception. The lark-oapi SDK supplies the
tenant token (its TokenManager, cache included); the Bitable calls themselves are sent here, because the SDK's
async transport builds a new httpx client, and with it a TLS context (25-70 ms of CPU here), for every call, and
unmarshals every answer into typed objects: together most of the CPU of a 500-row search page.

The table keeps the outcome of its latest real call (`health()`): /readyz answers from it instead of calling.
"""

import asyncio
import heapq
import importlib.util
import itertools
import json
import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx
import requests
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from app.errors import CredentialsRejected, QuotaExhausted, ServiceError, StoreRejected, StoreUnavailable
from app.metrics import FEISHU_CALLS, FEISHU_LATENCY, FEISHU_RETRIES
from app.models import FeishuUsage, utc_now
from app.store.chunks import chunked


def _register_lark_without_its_services() -> None:
    """Register the lark_oapi package without running its __init__, which imports every Open API service.

    That __init__ loads ~11,000 modules (~170 MB, ~7 s); this edge needs only lark_oapi.core (~40 modules).
    A later `import lark_oapi as lark; lark.Client` still works: the first lookup of a name the package
    itself defines runs the real __init__ then (PEP 562).
    """
    if "lark_oapi" in sys.modules:
        return
    spec = importlib.util.find_spec("lark_oapi")
    if spec is None or spec.loader is None:
        return  # not installed: the imports below fail with the usual message
    package = importlib.util.module_from_spec(spec)

    def load_everything(name: str) -> Any:
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = load_everything  # type: ignore[method-assign]
    sys.modules["lark_oapi"] = package


_register_lark_without_its_services()

from lark_oapi.core.enum import LogLevel  # noqa: E402
from lark_oapi.core.exception import ObtainAccessTokenException  # noqa: E402
from lark_oapi.core.log import logger as lark_logger  # noqa: E402
from lark_oapi.core.model import Config  # noqa: E402
from lark_oapi.core.token.manager import TokenManager  # noqa: E402

log = logging.getLogger(__name__)

_RATE_LIMITED = 99991400
_QUOTA_EXHAUSTED = 99991403  # the tenant's monthly API quota: permanent until it resets
_TOKEN_CODES = {
    99991661: "token missing",
    99991663: "token invalid",
    99991664: "token invalid",
    99991668: "token expired",
}
_FAILED = 1254002
_RETRY_CODES = {
    1254290: "too many requests",
    1254291: "write conflict",
    1254607: "data not ready",
    1255040: "request timed out",
    # answered with HTTP 200; the search page calls an occasional 1254002 a server timeout to retry
    _FAILED: "failed (a server timeout)",
    1255001: "internal error",
    1255002: "RPC error",
    1255003: "marshal error",
    1255004: "unmarshal error",
    1255005: "conversion error",
}
_REFUSED_BEFORE_WRITING = {1254290, 1254291}  # too many requests, a write conflict: the write did not start
_REPEATED_TOKEN = {1254608, 1255006}  # the two documented answers to a reused client_token, beside the original
_RECORD_MISSING = 1254043
_TOO_LARGE_RESPONSE = 1254030
# Documented validation codes: the rows themselves were refused, nothing was written, a smaller batch may pass
_INVALID_ROWS = {
    1254045: "a column named in the write does not exist: run `python -m app setup-bitable`",
    1254060: "a text cell could not be converted",
    1254061: "a number cell could not be converted",
    1254062: "a single select cell could not be converted",
    1254064: "a date cell could not be converted",
    1254104: "batch too large",
    1254130: "a cell is too large",
}
_PERMANENT_HINTS = {
    1254041: "the table was not found: check FEISHU_BITABLE_APP_TOKEN and FEISHU_BITABLE_TABLE_ID",
    1254018: "invalid search filter",
    1254107: "search filter too long",
    1254024: "a column named in field_names does not exist: run `python -m app setup-bitable`",
}
_READS = {"search", "batch_get", "fields_list"}
_MAX_PAGE_SIZE = 500
MAX_GET = 100  # record ids per batch_get
# Calls a second per endpoint (docs/feishu.md, the record calls' table). Starts are spaced 5% wider than that: the
# gateway counts arrivals, which come a few ms late or early, and a 429 costs a second.
_RATE_LIMITS = {"batch_create": 50, "batch_update": 50, "batch_delete": 50, "batch_get": 20, "search": 20}
_RATE_MARGIN = 1.05


class _Retry(Exception):
    """A failure that another try may fix."""

    def __init__(self, reason: str, wait: float | None = None, *, maybe_applied: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.maybe_applied = maybe_applied  # False: refused before it reached the table (rate limit, token)


class _TooLarge(Exception):
    """The answer would be too large (1254030): ask for fewer rows."""


@dataclass(slots=True)
class _Tries:
    """What the tries of one call found out."""

    maybe_applied: bool = False  # a try of this write may have landed without its answer saying so
    token_refreshed: bool = False
    page_token_failed: bool = False


class MaybeApplied(Exception):
    """A create may have landed, its answer does not say: look its rows up by identifier before writing again.

    Either Feishu answered a reused client_token (1254608 or 1255006), or it refused the create after a try whose
    answer was lost; then `refusal` is that refusal, for the rows the lookup does not find.
    """

    def __init__(self, refusal: StoreRejected | None = None):
        super().__init__(refusal.detail if refusal else "a reused client_token")
        self.refusal = refusal


class InvalidRows(StoreRejected):
    """Feishu refused the rows of a write for their content (a documented validation code): nothing was written."""


class RecordMissing(Exception):
    """A batch named a record id the table does not have; the whole batch was refused."""


class _PageTokenRefused(StoreRejected):
    """A page_token refused twice: the caller's token, not the table's health."""


@dataclass(frozen=True, slots=True)
class CallHealth:
    """What this process's latest real calls to the table showed, in seconds on the table's clock.

    A call the table answered (code 0, or a refusal of that request's own rows or record ids) is healthy; one that
    could not be made, kept failing or was refused for access, quota or the table itself carries its error.
    """

    last_call_at: float | None = None  # when the latest call that showed anything ended
    last_error: ServiceError | None = None  # how that call failed; None: the table answered it
    last_write_at: float | None = None  # when the latest write call ended, whatever its answer (it may have landed)


# refusals of a request's own rows or record ids: the table answered
_ANSWERED = (InvalidRows, MaybeApplied, RecordMissing, _TooLarge)


class _Turns:
    """Reads share the table, a write has it alone, each in order of arrival.

    Feishu may answer 1254291 to a second write on a table and to a read that arrives during a write: a call
    that would meet one of ours waits for it instead, which costs no quota and no backoff.
    """

    def __init__(self) -> None:
        self._reading = 0
        self._writing = False
        self._waiting: deque[tuple[bool, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def take(self, write: bool) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another event loop: the last one's holders and waiters went with it
            self._loop, self._reading, self._writing, self._waiting = loop, 0, False, deque()
        if self._waiting or not self._free(write):
            waiter = (write, loop.create_future())
            self._waiting.append(waiter)
            try:
                await waiter[1]
            except BaseException:
                if waiter[1].done() and not waiter[1].cancelled():
                    self._release(write)  # granted as it was cancelled: pass the turn on
                elif waiter in self._waiting:
                    self._waiting.remove(waiter)
                    self._grant()
                raise
        else:
            self._hold(write)
        try:
            yield
        finally:
            self._release(write)

    def _free(self, write: bool) -> bool:
        return not self._writing and not (write and self._reading)

    def _hold(self, write: bool) -> None:
        if write:
            self._writing = True
        else:
            self._reading += 1

    def _release(self, write: bool) -> None:
        if write:
            self._writing = False
        else:
            self._reading -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._free(self._waiting[0][0]):
            write, future = self._waiting.popleft()
            if not future.done():  # a cancelled waiter gives its turn to the next
                self._hold(write)
                future.set_result(None)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: int


@dataclass(slots=True)
class Page:
    records: list[tuple[str, dict[str, Any]]]
    page_token: str | None
    total: int | None


class _Pacer:
    """Spaces the starts of one endpoint's calls under its rate limit; parallel searches wait here, not on 429s.

    Of the calls waiting, the one of highest priority starts first (in order of arrival among equals).
    """

    def __init__(self, per_second: float):
        self._interval = _RATE_MARGIN / per_second
        self._next = 0.0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self, priority: float) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another event loop: the last one's timer and waiters went with it
            self._loop, self._waiting, self._timer, self._next = loop, [], None, 0.0
        future = loop.create_future()
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), future))
        if self._timer is None:
            self._arm()
        await future

    def _arm(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_at(max(self._loop.time(), self._next), self._release)

    def _release(self) -> None:
        assert self._loop is not None
        self._timer = None
        while self._waiting:
            future = heapq.heappop(self._waiting)[2]
            if not future.done():  # a cancelled call gives its turn to the next
                future.set_result(None)
                # from when it really starts, not from its slot: after a late one, two must not start close
                self._next = self._loop.time() + self._interval
                break
        if self._waiting:
            self._arm()


class FeishuTable:
    """One Bitable table: its calls, paced, retried and translated."""

    def __init__(
        self,
        sdk: Any,
        app_token: str,
        table_id: str,
        *,
        attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        config: Config = sdk if isinstance(sdk, Config) else sdk.config  # an SDK Config, or a lark.Client's
        self._config = config
        self._url = (
            f"{config.domain}/open-apis/bitable/v1/apps/{quote(app_token, safe='')}/tables/{quote(table_id, safe='')}"
        )
        self.app_token = app_token
        self.table_id = table_id
        self._attempts = attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._pacers = {endpoint: _Pacer(rate) for endpoint, rate in _RATE_LIMITS.items()}
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._token_fetch: asyncio.Future[str] | None = None
        self._turns = _Turns()
        self._page_sizes: dict[str, int] = {}  # page token → the smaller page size its search fell back to
        self.clock = clock  # the time of `health()`
        self._health = CallHealth()
        self._since = utc_now()
        self._calls: Counter[str] = Counter()  # every HTTP attempt, per endpoint, for `usage()`
        self._rate_limited: Counter[str] = Counter()

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
        clock: Callable[[], float] = time.monotonic,
        **retry: Any,
    ) -> "FeishuTable":
        config = Config()
        config.app_id, config.app_secret, config.domain, config.timeout = app_id, app_secret, domain, timeout
        config.log_level = LogLevel[log_level.upper()]
        lark_logger.setLevel(config.log_level.value)  # what the SDK's Client.builder() does
        return cls(config, app_token, table_id, clock=clock, **retry)

    def health(self) -> CallHealth:
        return self._health

    def usage(self) -> FeishuUsage:
        return FeishuUsage(self._since, dict(self._calls), dict(self._rate_limited))

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._http_loop is asyncio.get_running_loop():
            await http.aclose()

    # ---- calls ----------------------------------------------------------------------------------

    async def list_fields(self) -> list[Field]:
        fields, token = [], None
        while True:
            query = {"page_size": 100, **({"page_token": token} if token else {})}
            data = await self._call("fields_list", "GET", "/fields", query=query)
            fields += [Field(item["field_name"], item["type"]) for item in data.get("items") or []]
            if not data.get("has_more"):
                return fields
            token = data.get("page_token")

    async def create_field(self, name: str, type_: int, prop: dict[str, Any] | None = None) -> None:
        body = {"field_name": name, "type": type_, **({"property": prop} if prop else {})}
        await self._call("fields_create", "POST", "/fields", body=body)

    async def batch_create(self, body: bytes, client_token: str) -> list[tuple[str, dict[str, Any]]]:
        """Create the rows of a `create_body`, every try with the same client_token.

        Raise MaybeApplied when an answer leaves open whether the rows landed, InvalidRows when Feishu refused them
        for their content (nothing written).
        """
        tries = _Tries()
        try:
            data = await self._call(
                "batch_create",
                "POST",
                "/records/batch_create",
                query={"client_token": client_token},
                body=body,
                special={code: MaybeApplied for code in _REPEATED_TOKEN},
                tries=tries,
            )
        except StoreRejected as exc:
            if tries.maybe_applied:
                raise MaybeApplied(exc) from None
            raise
        return _records(data.get("records"))

    async def batch_update(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Update rows; raise RecordMissing when one record id is unknown (nothing is applied then)."""
        body = {"records": [{"record_id": record_id, "fields": fields} for record_id, fields in rows]}
        await self._call(
            "batch_update", "POST", "/records/batch_update", body=body, special={_RECORD_MISSING: RecordMissing}
        )

    async def batch_delete(self, record_ids: list[str]) -> None:
        """Delete rows; raise RecordMissing when one record id is unknown (nothing is deleted then)."""
        body = {"records": record_ids}
        await self._call(
            "batch_delete", "POST", "/records/batch_delete", body=body, special={_RECORD_MISSING: RecordMissing}
        )

    async def batch_get(self, record_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """The rows that exist; an answer too large to send is asked for again in halves."""
        try:
            data = await self._call(
                "batch_get",
                "POST",
                "/records/batch_get",
                body={"record_ids": record_ids},
                special={_TOO_LARGE_RESPONSE: _TooLarge},
            )
        except _TooLarge:
            if len(record_ids) == 1:
                raise StoreRejected(f"Feishu batch_get: record {record_ids[0]} is too large to read") from None
            half = len(record_ids) // 2
            return [*await self.batch_get(record_ids[:half]), *await self.batch_get(record_ids[half:])]
        return _records(data.get("records"))

    async def search(
        self,
        *,
        filter_: dict[str, Any] | None = None,
        sort: list[dict[str, Any]] | None = None,
        field_names: list[str] | None = None,
        page_size: int = 500,
        page_token: str | None = None,
        priority: float = math.inf,
    ) -> Page:
        """One page; `priority` orders the searches that wait for the rate limit (the highest first).

        A page too large to send (1254030) is asked for again at half the size, and the pages after it keep
        the smaller size.
        """
        body: dict[str, Any] = {}  # never absent: a search with no body answers 9499
        if filter_:
            body["filter"] = filter_
        if sort:
            body["sort"] = sort
        if field_names:
            body["field_names"] = field_names
        if page_token in self._page_sizes:
            page_size = min(page_size, self._page_sizes.pop(page_token))
        while True:
            query = {"page_size": page_size, **({"page_token": page_token} if page_token else {})}
            try:
                data = await self._call(
                    "search",
                    "POST",
                    "/records/search",
                    query=query,
                    body=body,
                    priority=priority,
                    special={_TOO_LARGE_RESPONSE: _TooLarge},
                )
                break
            except _TooLarge:
                if page_size == 1:
                    raise StoreRejected("Feishu search: a single row is too large to read") from None
                page_size //= 2
        next_token = data.get("page_token") if data.get("has_more") else None
        if next_token and page_size < _MAX_PAGE_SIZE:
            self._page_sizes[next_token] = page_size
            while len(self._page_sizes) > 1_000:  # searches abandoned midway leave theirs behind
                del self._page_sizes[next(iter(self._page_sizes))]
        return Page(records=_records(data.get("items")), page_token=next_token, total=data.get("total"))

    # ---- the edge -------------------------------------------------------------------------------

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | bytes | None = None,
        special: dict[int, type[Exception]] | None = None,
        priority: float = math.inf,
        tries: _Tries | None = None,
    ) -> dict[str, Any]:
        """One call, tried again while a try may fix it; its outcome is kept in `health()`."""
        try:
            answer = await self._tries(endpoint, method, path, query, body, special, priority, tries)
        except BaseException as exc:
            self._note(endpoint, exc)
            raise
        self._note(endpoint, None)
        return answer

    def _note(self, endpoint: str, failure: BaseException | None) -> None:
        now, health = self.clock(), self._health
        if endpoint not in _READS:
            health = replace(health, last_write_at=now)
        if failure is None or isinstance(failure, _ANSWERED):
            health = replace(health, last_call_at=now, last_error=None)
        elif isinstance(failure, ServiceError) and not isinstance(failure, _PageTokenRefused):
            health = replace(health, last_call_at=now, last_error=failure)
        self._health = health  # a cancelled call, or a refused page token, says nothing of the table

    async def _tries(
        self,
        endpoint: str,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: dict[str, Any] | bytes | None,
        special: dict[int, type[Exception]] | None,
        priority: float,
        tries: _Tries | None,
    ) -> dict[str, Any]:
        content = _encode(body) if isinstance(body, dict) else body
        tries = tries or _Tries()
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
                    try:
                        return await self._once(endpoint, method, path, query, content, special, priority, tries)
                    except _Retry as exc:
                        tries.maybe_applied = tries.maybe_applied or exc.maybe_applied
                        raise
        except _Retry as exc:
            raise StoreUnavailable(
                f"Feishu {endpoint} failed {self._attempts} times; last: {exc.reason}",
                retry_after=max(1, math.ceil(exc.wait or self._next_backoff())),
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        endpoint: str,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        content: bytes | None,
        special: dict[int, type[Exception]] | None,
        priority: float,
        tries: _Tries,
    ) -> dict[str, Any]:
        client = self._client()  # first: building it (a TLS context) overlaps a token fetch
        token = await self._tenant_token()
        async with self._turns.take(write=endpoint not in _READS):
            if endpoint in self._pacers:
                await self._pacers[endpoint].wait(priority)
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if content else {})}
            try:
                response = await client.request(
                    method, self._url + path, params=query, content=content, headers=headers
                )
                answer = json.loads(response.content)
            except httpx.TimeoutException:
                self._observe(endpoint, "timeout", started)
                raise _Retry(f"timed out after {time.perf_counter() - started:.1f}s") from None
            except httpx.HTTPError as exc:
                self._observe(endpoint, "transport", started)
                raise _Retry(f"connection failed: {type(exc).__name__}") from None
            except ValueError as exc:  # a gateway's HTML page instead of JSON
                self._observe(endpoint, "not_json", started)
                raise _Retry(f"answer was not Feishu JSON ({type(exc).__name__})") from None
        if not isinstance(answer, dict):
            self._observe(endpoint, "not_json", started)
            raise _Retry("answer was not a Feishu JSON object")
        status, code = response.status_code, answer.get("code")
        self._observe(endpoint, str(code), started)
        log.debug("feishu %s status=%s code=%s %.3fs", endpoint, status, code, time.perf_counter() - started)
        if code == 0:
            return answer.get("data") or {}
        if special and code in special:
            raise special[code]()
        if code in _TOKEN_CODES:
            self._forget_token()
            # the first at once with a new token; a fresh token refused too backs off, within the attempts
            wait, tries.token_refreshed = (None if tries.token_refreshed else 0), True
            raise _Retry(f"tenant {_TOKEN_CODES[code]} (code {code})", wait=wait, maybe_applied=False)
        if code == _QUOTA_EXHAUSTED:
            raise QuotaExhausted(
                "Feishu's monthly API quota for this tenant is used up (code 99991403): every Feishu call fails "
                "until it resets; the free plan allows 10,000 calls a month for all custom apps together"
            )
        if status == 429 or code == _RATE_LIMITED:
            self._rate_limited[endpoint] += 1
            raise _Retry("rate limited", wait=_reset_seconds(response), maybe_applied=False)
        if code == _FAILED and query and query.get("page_token"):
            if tries.page_token_failed:  # the docs give 1254002 for an invalid page_token too
                raise _PageTokenRefused(
                    f"Feishu {endpoint} refused the page_token twice (code {code}): it may be invalid"
                )
            tries.page_token_failed = True
        if code in _RETRY_CODES:
            refused = code in _REFUSED_BEFORE_WRITING
            raise _Retry(_RETRY_CODES[code], wait=_reset_seconds(response), maybe_applied=not refused)
        if status >= 500:
            raise _Retry(f"HTTP {status} (code {code})")
        if code in _INVALID_ROWS:
            raise InvalidRows(f"Feishu {endpoint} refused the rows: code {code}: {_INVALID_ROWS[code]}")
        hint = _PERMANENT_HINTS.get(code, answer.get("msg") or "")
        raise StoreRejected(f"Feishu {endpoint} refused the request: code {code}: {hint}")

    def _client(self) -> httpx.AsyncClient:
        """One pooled client per event loop: its connections belong to the loop that opened them."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http, self._http_loop = httpx.AsyncClient(timeout=self._config.timeout), loop
        return self._http

    def _observe(self, endpoint: str, code: str, started: float) -> None:
        self._calls[endpoint] += 1
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
        return f"self_tenant_token:{self._config.app_id}"

    async def _tenant_token(self) -> str:
        """The SDK's cached tenant token; calls that find none share one fetch (the SDK's cache has no lock)."""
        token = TokenManager.cache.get(self._token_key())
        if token:
            return token
        fetching = self._token_fetch
        if fetching is None or fetching.done() or fetching.get_loop() is not asyncio.get_running_loop():
            fetching = self._token_fetch = asyncio.ensure_future(self._fetch_token())
        return await asyncio.shield(fetching)  # a caller that gives up leaves the fetch to the others

    async def _fetch_token(self) -> str:
        """A fetch runs in a thread, as the SDK fetches it with blocking `requests`."""
        try:
            return await asyncio.to_thread(TokenManager.get_self_tenant_token, self._config)
        except ObtainAccessTokenException as exc:
            if exc.code == _RATE_LIMITED:
                raise _Retry("token endpoint rate limited") from None
            raise CredentialsRejected(
                f"Feishu refused the app credentials (code {exc.code}): check FEISHU_APP_ID and FEISHU_APP_SECRET"
            ) from None
        except (requests.RequestException, ValueError) as exc:
            raise _Retry(f"token fetch failed: {type(exc).__name__}") from None

    def _forget_token(self) -> None:
        TokenManager.cache.set(self._token_key(), "", 0)


async def rows_of(table: FeishuTable, record_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The rows of these record ids that the table has, MAX_GET to a call."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunked(list(dict.fromkeys(record_ids)), MAX_GET):
        found.update(await table.batch_get(chunk))
    return found


def create_body(rows: list[dict[str, Any]]) -> bytes:
    """A batch_create body, encoded apart from the call: a writer encodes the next while a write is in flight."""
    return _encode({"records": [{"fields": row} for row in rows]})


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _reset_seconds(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["x-ogw-ratelimit-reset"])
    except (KeyError, ValueError):
        return None


def _records(records: list | None) -> list[tuple[str, dict[str, Any]]]:
    return [(record["record_id"], record.get("fields") or {}) for record in records or []]
