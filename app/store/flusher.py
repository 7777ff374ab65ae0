"""The flusher: writes the outbox to its Bitable table, oldest first, up to 1,000 rows a call, one call a window.

It waits until the oldest change in the outbox is STATUS_FLUSH_SECONDS old (at once when 1,000 wait), so two of
its writes are a window apart and every change is written within one window; it takes the oldest 1,000, merges
each record's changes in the order they were accepted (a later cell overrides an earlier one), writes them in
one `batch_update` inside a turn of the single writer, and deletes them once Feishu confirms. A read or a direct
write calls `flush()` first: everything accepted so far is written then and there, so it sees (or goes after)
every report accepted before it.

What Feishu answers decides what becomes of a batch:
- written: deleted from the outbox;
- a record id the table no longer has (RecordMissing): the rows still there are written, the others dropped
  with a warning that counts them;
- cells refused for their content (InvalidRows): written again in halves, down to the rows refused (at most 20
  calls more), which are written as bare statuses, the refusal logged; refused again, moved aside to the outbox's
  `refused` table with an error: the outbox never wedges;
- a change whose cells cannot be built at all: moved aside the same way, with an error, before any call;
- anything else (Feishu down, the quota spent, credentials refused): kept, and tried again after a pause that
  doubles up to a minute; reports are still accepted meanwhile.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import ServiceError, StoreUnavailable
from app.locks import FileLock
from app.models import StatusChange
from app.store.columns import STATUS
from app.store.feishu import FeishuTable, InvalidRows, RecordMissing, rows_of
from app.store.outbox import Entry, Outbox
from app.store.sqlite_file import local_storage
from app.store.writer import BatchWriter

log = logging.getLogger(__name__)

MAX_UPDATE = 1_000  # records per batch_update
_LOCK_POLL = 0.02  # seconds between tries of the flush lock another process holds for one flush
_CLOSE_SECONDS = 5.0  # a last flush at close; what it leaves is written at the next start
_TRIES = 4  # writes of one batch: a row gone meanwhile needs one more
# calls spent halving a batch refused for its content: 1,000 rows down to the one refused take 10 halvings of 2
_SPLIT_CALLS = 20


@dataclass(slots=True)
class _Written:
    """What became of a batch's rows beside those written: gone from the table, or refused for good (and why)."""

    missing: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    split_calls: int = _SPLIT_CALLS  # left to spend on halves of a refused batch


class Flusher:
    """Owns the writing of one outbox: its timer, its backoff and its flush lock."""

    def __init__(
        self,
        table: FeishuTable,
        outbox: Outbox,
        writer: BatchWriter,
        cells: Callable[[StatusChange], dict[str, Any]],
        lock: Path,
        *,
        window_seconds: float = 2.0,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
    ):
        self._table = table
        self._outbox = outbox
        self._writer = writer
        self._cells = cells
        self._lock = FileLock(lock)
        self._window = window_seconds
        self._backoff = backoff_seconds
        self._backoff_max = backoff_max_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ---- verbs --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer; what a crash or an outage left in the outbox is already due."""
        self._task = asyncio.create_task(self._run(), name="bitable-flusher")

    def wake(self) -> None:
        """Changes were appended: the flusher looks at the outbox again."""
        self._wake.set()

    async def flush(self) -> None:
        """Write every change accepted so far, now, in a turn of the writer; nothing to do costs no call."""
        if self._outbox.depth():
            async with self._writer.turn():
                await self.flush_in_turn()

    async def flush_in_turn(self) -> None:
        """`flush()` for a caller that holds the writer's turn, and writes after the changes accepted before it."""
        if not self._outbox.depth():
            return
        async with self._exclusive():
            until = self._outbox.newest()
            while until is not None and await self._write_oldest(until):
                pass

    async def close(self) -> None:
        """Stop the timer, then one last flush, bounded: what it leaves stays in the outbox for the next start."""
        if self._task is None:  # never started: the store did not open
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self.flush()
        except (ServiceError, TimeoutError) as exc:
            detail = exc.detail if isinstance(exc, ServiceError) else f"not done within {_CLOSE_SECONDS:.0f}s"
            log.warning("status reports stay in the outbox until the next start: %s", detail)

    # ---- the timer ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._due()
                async with self._writer.turn(), self._exclusive():
                    await self._write_oldest(None)
                failures = 0
            except Exception as exc:  # the flusher must outlive any one failure: what it holds stays in the outbox
                failures += 1
                pause = min(self._backoff_max, self._backoff * 2 ** (failures - 1))
                if isinstance(exc, ServiceError):
                    log.warning("writing status reports failed (%s); trying again in %.2fs", exc.detail, pause)
                else:
                    log.exception("writing status reports failed; trying again in %.2fs", pause)
                await asyncio.sleep(pause)

    async def _due(self) -> None:
        """Until the oldest change waiting is a window old, or a whole batch waits."""
        while True:
            self._wake.clear()  # before looking: an append from here on wakes the wait below
            backlog = self._outbox.backlog()
            wait = None
            if backlog.depth >= MAX_UPDATE:
                return
            if backlog.oldest_age_seconds is not None:
                wait = self._window - backlog.oldest_age_seconds
                if wait <= 0:
                    return
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """The outbox's flush lock: one flush at a time across processes, or two could write a record out of order."""
        while True:
            with local_storage(f"taking {self._lock.path.name}"):
                if self._lock.acquire():
                    break
            await asyncio.sleep(_LOCK_POLL)  # another process is flushing; a flock cannot be awaited
        try:
            yield
        finally:
            self._lock.release()

    # ---- one batch ----------------------------------------------------------------------------------------------

    async def _write_oldest(self, until: int | None) -> bool:
        """Write the oldest changes (up to `until`), one `batch_update`; answer whether there were any."""
        entries = await asyncio.to_thread(self._outbox.take, MAX_UPDATE, until)
        if not entries:
            return False
        rows: dict[str, dict[str, Any]] = {}
        unbuilt: list[tuple[Entry, str]] = []
        for entry in entries:  # in the order accepted: a later cell overrides an earlier one
            try:
                cells = self._cells(entry.change)
            except Exception as exc:  # a bug must not wedge the outbox: this one entry is set aside
                unbuilt.append((entry, f"its cells could not be built: {type(exc).__name__}: {exc}"))
                continue
            rows.setdefault(entry.change.record_id, {}).update(cells)
        if unbuilt:
            log.error(
                "could not build the cells of %d status reports (%s); kept in the outbox's `refused` table: %s",
                len(unbuilt),
                _some({entry.change.record_id for entry, _ in unbuilt}),
                unbuilt[0][1],
            )
        written = await self._write(rows)
        aside = {entry.seq for entry, _ in unbuilt}
        refused = [
            (entry, written.refused[entry.change.record_id])
            for entry in entries
            if entry.change.record_id in written.refused and entry.seq not in aside
        ]
        await asyncio.to_thread(self._outbox.done, entries, unbuilt + refused, written.missing)
        if written.missing:
            log.warning(
                "dropped %d status reports: their records are gone from the table (%s)",
                sum(entry.change.record_id in written.missing for entry in entries),
                _some(written.missing),
            )
        if refused:
            log.error(
                "Feishu refused %d status reports even as bare statuses (%s); kept in the outbox's `refused` table: %s",
                len(refused),
                _some(set(written.refused)),
                refused[0][1],
            )
        return True

    async def _write(self, rows: dict[str, dict[str, Any]]) -> _Written:
        """One `batch_update` of the rows, and the calls a missing row or a content refusal calls for."""
        written = _Written()
        await self._send(rows, written, bare=False)
        return written

    async def _send(self, rows: dict[str, dict[str, Any]], written: _Written, *, bare: bool) -> None:
        """Write the rows; refused for their content, in halves down to the refused ones, which go as bare statuses."""
        for _ in range(_TRIES):
            if not rows:
                return
            body = [(record_id, {STATUS: cells[STATUS]} if bare else cells) for record_id, cells in rows.items()]
            try:
                await self._table.batch_update(body)
                return
            except RecordMissing:  # the whole batch was refused: find the strangers, write the rest
                existing = await rows_of(self._table, list(rows))
                written.missing |= rows.keys() - existing.keys()
                rows = {record_id: cells for record_id, cells in rows.items() if record_id in existing}
            except InvalidRows as exc:
                if bare:
                    written.refused |= dict.fromkeys(rows, exc.detail)
                elif len(rows) > 1 and written.split_calls >= 2:  # one bad cell must not cost the others their results
                    written.split_calls -= 2
                    items = list(rows.items())
                    for half in (items[: len(items) // 2], items[len(items) // 2 :]):
                        await self._send(dict(half), written, bare=False)
                else:
                    log.error(
                        "Feishu refused the cells of %d status reports (%s); writing bare statuses",
                        len(rows),
                        exc.detail,
                    )
                    await self._send(rows, written, bare=True)
                return
        if rows:
            raise StoreUnavailable("Feishu kept refusing a batch of status reports for rows that go missing")


def _some(record_ids: set[str]) -> str:
    shown = sorted(record_ids)[:5]
    return ", ".join(shown) + (f" and {len(record_ids) - len(shown)} more" if len(record_ids) > len(shown) else "")
