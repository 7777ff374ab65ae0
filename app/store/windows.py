"""What /readyz and /api/stats cost on Bitable: answers kept for a window, and one call at a time to renew them.

`TableReadiness` answers the store's readiness from the table's latest real call (`FeishuTable.health()`), and calls
only when that is older than READY_CHECK_SECONDS. `PoolCounts` keeps the counts per status for STATS_CACHE_SECONDS,
or ten times that while this process has written nothing to the table, and counts them in as few searches as the
pool's size allows. Both renew with one shared call, however many callers wait for it; a window of 0 renews on
every call. Times are on the table's clock.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from app.models import RECENT_FAILURES, Backlog, Counts, TaskPage, TaskRecord, TaskStatus, utc_now
from app.store.columns import STATUS, Schema, plain
from app.store.feishu import FeishuTable
from app.store.searches import MAX_PAGE, status_scan

T = TypeVar("T")

SCAN_ROWS = 2_000  # up to this many rows, reading the Status column (500 a search) costs fewer calls than 5 counts
_NEVER = datetime.min.replace(tzinfo=UTC)
IDLE_FACTOR = 10  # counts are kept this many windows while this process writes nothing to the table


class _Shared(Generic[T]):
    """One run of `make` at a time: callers that arrive while it runs share its answer or its error."""

    def __init__(self, make: Callable[[], Awaitable[T]]):
        self._make = make
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        running = self._running
        if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
            running = self._running = asyncio.ensure_future(self._make())
            running.add_done_callback(_retrieve)
        return await asyncio.shield(running)  # a caller that gives up (a probe's timeout) leaves it to the others


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved here too: every caller may have given up before it failed


class TableReadiness:
    """The store's part of /readyz: the latest real call within the window answers; else one column list, shared."""

    def __init__(self, table: FeishuTable, window_seconds: float):
        self._table = table
        self._window = window_seconds
        self._list_fields = _Shared(table.list_fields)

    async def check(self) -> None:
        """Raise the latest call's error while it is within the window; call when no call is."""
        if self._window <= 0:
            await self._table.list_fields()
            return
        health = self._table.health()
        if health.last_call_at is not None and self._table.clock() - health.last_call_at < self._window:
            if health.last_error is not None:
                raise health.last_error.with_traceback(None)
            return
        await self._list_fields()  # its outcome is the table's latest: it answers the next window's probes


@dataclass(frozen=True, slots=True)
class _Kept:
    counts: Counts
    counted_at: float  # when the count began


class PoolCounts:
    """Tasks per status, kept while they are known to hold, counted by one caller at a time.

    Counts are served while younger than the window; older, only while this process has written nothing to the
    table since they were counted and holds no unwritten report, and for at most IDLE_FACTOR windows, which bounds
    how late a change made elsewhere (by hand, by another process) shows. Due counts are counted once for every
    caller waiting; a count that fails is raised to them all, and the old counts are not served.
    """

    def __init__(
        self,
        table: FeishuTable,
        page: Callable[[TaskStatus | None, int, str | None], Awaitable[TaskPage]],
        newest_failed: Callable[[int], Awaitable[TaskPage]],
        backlog: Callable[[], Backlog | None],
        schema: Callable[[], Schema],
        window_seconds: float,
    ):
        self._table = table
        self._page = page
        self._newest_failed = newest_failed
        self._backlog = backlog
        self._schema = schema
        self._window = window_seconds
        self._kept: _Kept | None = None
        self._rows = 0  # rows in the table at the last count: it picks how the next one counts
        self._unlabeled = 0  # rows with no known status at the last scan, which counts by status leave out
        self._recount = _Shared(self._count_now)

    async def get(self) -> Counts:
        if self._window <= 0:
            as_of = utc_now()
            by_status, failed = await self._count()
            return Counts(by_status, as_of, failed)
        kept = self._kept
        if kept is not None and self._holds(kept):
            return kept.counts
        return await self._recount()

    def _holds(self, kept: _Kept) -> bool:
        age = self._table.clock() - kept.counted_at
        if age < self._window:
            return True
        written = self._table.health().last_write_at
        untouched = (written is None or written < kept.counted_at) and not self._reports_waiting()
        return untouched and age < self._window * IDLE_FACTOR

    def _reports_waiting(self) -> bool:
        backlog = self._backlog()
        return backlog is not None and backlog.depth > 0

    async def _count_now(self) -> Counts:
        started, as_of = self._table.clock(), utc_now()
        by_status, failed = await self._count()
        counts = Counts(by_status, as_of, failed)
        self._kept = _Kept(counts, started)
        return counts

    async def _count(self) -> tuple[dict[str, int], tuple[TaskRecord, ...]]:
        """A small pool by reading its Status column; a larger one, or one with reports waiting, by five counts (the
        FAILED one reads the newest failures too)."""
        scanned_rows = None
        if self._rows <= SCAN_ROWS and not self._reports_waiting():
            scanned = await self._scan()
            if scanned is not None:
                return scanned
            scanned_rows = self._rows  # the unfiltered total of the scan's first page
        # through the store, which writes waiting reports first
        others = [status for status in TaskStatus if status is not TaskStatus.FAILED]
        failed, *pages = await asyncio.gather(
            self._newest_failed(RECENT_FAILURES), *(self._page(status, 1, None) for status in others)
        )
        totals = {status: page.total for status, page in zip(others, pages, strict=True)}
        totals[TaskStatus.FAILED] = failed.total
        counts = {status.value: totals[status] or 0 for status in TaskStatus}
        if scanned_rows is not None:
            self._unlabeled = max(0, scanned_rows - sum(counts.values()))
        self._rows = sum(counts.values()) + self._unlabeled  # else a pool past the scan is scanned again each time
        return counts, tuple(failed.items)

    async def _scan(self) -> tuple[dict[str, int], tuple[TaskRecord, ...]] | None:
        """Counts from the Status column, 500 rows a search; None once the pool shows more than SCAN_ROWS rows."""
        counts = {status.value: 0 for status in TaskStatus}
        failed: list[TaskRecord] = []
        schema = self._schema()
        seen, token = 0, None
        while True:
            page = await self._table.search(**status_scan(schema), page_size=MAX_PAGE, page_token=token)
            seen += len(page.records)
            self._rows = max(seen, page.total or 0)
            if self._rows > SCAN_ROWS:
                return None
            for record_id, fields in page.records:
                status = plain(fields.get(STATUS))
                if status in counts:
                    counts[status] += 1
                if status == TaskStatus.FAILED:
                    failed.append(schema.decode(record_id, fields))
            if not (token := page.page_token):
                self._unlabeled = seen - sum(counts.values())
                return counts, _newest(failed)


def _newest(failed: list[TaskRecord]) -> tuple[TaskRecord, ...]:
    """The newest failures first, as SQLite sorts them: by finish time, then those without one by creation."""
    by_time = sorted(failed, key=lambda r: (r.finished_at or _NEVER, r.created_at or _NEVER), reverse=True)
    return tuple(by_time[:RECENT_FAILURES])
