"""The task pool in a Feishu Bitable: reads and updates here, new rows through the writer, dedup by the index,
workers' reports through the outbox and its flusher."""

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import Conflict, InvalidInput, StoreRejected, StoreUnavailable
from app.models import (
    NO_FILTER,
    Added,
    Backlog,
    Counts,
    FeishuUsage,
    NewTask,
    StatusChange,
    Stored,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
)
from app.paths import DataDir
from app.store.chunks import chunked
from app.store.columns import CREATED_AT, IDENTIFIER, PRIORITY, Schema, is_identifier, load_schema, number, plain
from app.store.feishu import FeishuTable, RecordMissing, rows_of
from app.store.flusher import MAX_UPDATE, Flusher
from app.store.index import IdentifierIndex, State
from app.store.outbox import FINISHED, Outbox
from app.store.rebuild import rebuild_index, rebuild_searches
from app.store.searches import (
    MAX_CONDITIONS,
    MAX_PAGE,
    count_search,
    failed_search,
    filter_search,
    identifier_chunks,
    identifier_search,
    lease_search,
    pick_search,
    prune_search,
    status_scan,
)
from app.store.timestamps import now_ms, to_ms
from app.store.windows import PoolCounts, TableReadiness
from app.store.writer import BatchWriter, NewRow

log = logging.getLogger(__name__)

MAX_DELETE = 500  # record ids per batch_delete
_PAGE_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # Feishu's page tokens are opaque, but printable ASCII


class BitableTaskStore:
    """The task pool in a Feishu Bitable, with a local identifier index for dedup and an outbox for reports."""

    def __init__(
        self,
        table: FeishuTable,
        index: IdentifierIndex,
        outbox: Outbox,
        flush_lock: Path,
        *,
        linger_seconds: float = 0.02,
        max_wait_seconds: float = 0.5,
        flush_seconds: float = 2.0,
        flush_backoff_seconds: float = 1.0,
        ready_check_seconds: float = 0.0,
        stats_cache_seconds: float = 0.0,
    ):
        self.table = table
        self.index = index
        self._outbox = outbox
        self._schema = Schema()
        self._writer = BatchWriter(table, index, linger_seconds=linger_seconds, max_wait_seconds=max_wait_seconds)
        self._flusher = Flusher(
            table,
            outbox,
            self._writer,
            lambda change: self._schema.changed_cells(change),  # the schema loaded at open, or again later
            flush_lock,
            window_seconds=flush_seconds,
            backoff_seconds=flush_backoff_seconds,
        )
        self._readiness = TableReadiness(table, ready_check_seconds)
        self._counts = PoolCounts(
            table, self.page, self.newest_failed, self.backlog, lambda: self._schema, stats_cache_seconds
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> "BitableTaskStore":
        table = FeishuTable.build(
            settings.feishu_app_id,
            settings.feishu_app_secret.get_secret_value(),
            settings.feishu_bitable_app_token,
            settings.feishu_bitable_table_id,
            settings.feishu_domain,
            settings.feishu_timeout_seconds,
            log_level=settings.log_level,
            attempts=settings.feishu_retry_attempts,
            backoff_base=settings.feishu_retry_base_seconds,
            clock=clock,
        )
        data_dir, table_id = DataDir(settings.data_dir), settings.feishu_bitable_table_id
        return cls(
            table,
            IdentifierIndex(data_dir.index_db(table_id)),
            Outbox(data_dir.outbox_db(table_id)),
            data_dir.outbox_lock(table_id),
            linger_seconds=settings.feishu_write_linger_ms / 1000,
            max_wait_seconds=settings.feishu_write_max_wait_ms / 1000,
            flush_seconds=settings.status_flush_seconds,
            # after a failed flush (each call already tried FEISHU_RETRY_ATTEMPTS times): never a busy loop
            flush_backoff_seconds=max(0.05, 2 * settings.feishu_retry_base_seconds),
            ready_check_seconds=settings.ready_check_seconds,
            stats_cache_seconds=settings.stats_cache_seconds,
        )

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.index.open()
            self._outbox.open()
            if self.index.complete:
                await self.load_schema()
            else:
                log.warning("identifier index missing or incomplete: rebuilding it from the table")
                await self._rebuild_and_load_schema()
            await self._writer.start()
            self._flusher.start()  # what a crash or an outage left in the outbox is due at once
        except BaseException:
            await self._outbox.close()
            self.index.close()
            raise

    async def _rebuild_and_load_schema(self) -> None:
        """The rebuild reads only Identifier: it starts beside the schema check, whose refusal names the columns."""
        rebuild = asyncio.ensure_future(self.reindex())
        try:
            await self.load_schema()
        except BaseException:
            rebuild.cancel()
            await asyncio.gather(rebuild, return_exceptions=True)
            raise
        await rebuild

    async def load_schema(self) -> None:
        self._schema = await load_schema(self.table)

    async def check(self) -> None:
        await self._readiness.check()

    async def close(self) -> None:
        """Each part is released even when one before it fails: the files and connections are not left open."""
        async with AsyncExitStack() as later:  # run last in, first out: writer, table, outbox, index
            later.callback(self.index.close)
            later.push_async_callback(self._outbox.close)
            later.push_async_callback(self.table.aclose)
            later.push_async_callback(self._writer.close)
            await self._flusher.close()

    # ---- adding, through the single writer ------------------------------------------------------------------

    async def add(self, tasks: Sequence[NewTask]) -> Added:
        try:
            known = self.index.lookup([task.identifier for task in tasks])
        except StoreUnavailable as exc:
            return Added([], exc)
        created_at = now_ms()
        results: dict[str, Stored] = {}
        new: dict[str, NewRow] = {}
        for task in tasks:
            entry = known.get(task.identifier)
            if task.identifier in results or task.identifier in new:
                continue
            if entry is not None and entry.state is not State.WRITING:
                results[task.identifier] = Stored(task.identifier, entry.record_id, created=False)
            else:  # new, or still WRITING: an earlier write of it may have landed, and the writer looks first
                row = NewRow(task.identifier, self._schema.new_row(task, created_at), uncertain=entry is not None)
                new[task.identifier] = row
        failure: BaseException | None = None
        if new:
            for identifier, outcome in zip(new, await self._writer.submit([*new.values()]), strict=True):
                if isinstance(outcome, Stored):
                    results[identifier] = outcome
                else:
                    failure = failure or outcome
        if isinstance(failure, StoreUnavailable):
            return Added([results[task.identifier] for task in tasks if task.identifier in results], failure)
        if failure is not None:
            raise failure
        return Added([results[task.identifier] for task in tasks])

    # ---- reading and updating -------------------------------------------------------------------------------

    async def lookup(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        return {i: e.record_id for i, e in self.index.lookup(identifiers).items() if e.state is not State.WRITING}

    async def get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        """The rows as read, with the reports still in the outbox laid over them, costing no call more."""
        waiting = self._outbox.waiting(record_ids)  # read first: a flush landing meanwhile is laid over again, alike
        found = {}
        for record_id, fields in (await rows_of(self.table, record_ids)).items():
            for change in waiting.get(record_id, ()):
                fields |= self._schema.changed_cells(change)
            found[record_id] = self._schema.decode(record_id, fields)
        return found

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        not_found: list[str] = []
        for chunk in chunked(list(changes), MAX_UPDATE):
            async with self._writer.turn():
                await self._flusher.flush_in_turn()  # every report accepted before this write applies before it
                chunk, moved_on = await self._still(chunk)
                rows = [(c.record_id, self._schema.changed_cells(c)) for c in chunk]
                missing: set[str] = set()
                try:
                    if rows:
                        await self.table.batch_update(rows)
                except RecordMissing:  # the whole batch was refused: find the strangers, update the rest
                    existing = await rows_of(self.table, [r for r, _ in rows])
                    missing = {record_id for record_id, _ in rows if record_id not in existing}
                    rows = [row for row in rows if row[0] in existing]
                    if rows:
                        await self.table.batch_update(rows)
            not_found += moved_on + [c.record_id for c in chunk if c.record_id in missing]
            applied = [c for c in chunk if c.record_id not in missing]
            await asyncio.to_thread(
                self.index.mark_stored, [(c.identifier, c.record_id) for c in applied if c.identifier]
            )
            # a task in a worker's hands is reported without a call; once finished, or gone, it is forgotten
            await asyncio.to_thread(
                self._outbox.remember,
                [c.record_id for c in applied if c.status not in FINISHED],
                [*missing, *(c.record_id for c in applied if c.status in FINISHED)],
            )
        return not_found

    async def set_priority(self, record_id: str, priority: int) -> TaskRecord | None:
        """One `batch_get` and, for a PENDING task, one `batch_update` of its Priority cell, in one writer's turn."""
        if not self._schema.has(PRIORITY):
            raise Conflict(
                "the Bitable table has no Priority column (a number), so the pick cannot order tasks by priority; "
                "`python -m app setup-bitable` adds it"
            )
        async with self._writer.turn():
            await self._flusher.flush_in_turn()  # a report accepted before this change is in the row read next
            fields = (await rows_of(self.table, [record_id])).get(record_id)
            if fields is None:
                return None
            record = self._schema.decode(record_id, fields)
            if record.status is not TaskStatus.PENDING:
                return record
            try:
                await self.table.batch_update([(record_id, {PRIORITY: priority})])
            except RecordMissing:  # deleted by hand since it was read
                return None
        record.priority = priority
        return record

    async def _still(self, changes: list[StatusChange]) -> tuple[list[StatusChange], list[str]]:
        """The changes to apply, and the record ids of those whose `if_still` no longer holds or whose row is gone."""
        conditional = [c.record_id for c in changes if c.if_still is not None]
        if not conditional:
            return changes, []
        current = await rows_of(self.table, conditional)

        def holds(change: StatusChange) -> bool:
            if change.if_still is None:
                return True
            fields = current.get(change.record_id)
            return fields is not None and self._schema.decode(change.record_id, fields).status is change.if_still

        return [c for c in changes if holds(c)], [c.record_id for c in changes if not holds(c)]

    async def report(self, changes: Sequence[StatusChange]) -> list[str]:
        """Durable in the outbox on return, written by the flusher within STATUS_FLUSH_SECONDS.

        A record id neither claimed here nor waiting in the outbox costs a `batch_get` (100 a call); one the table
        does not have is answered, not accepted. Feishu down then fails the report (503) before any is accepted.
        """
        record_ids = [change.record_id for change in changes]
        known = self._outbox.known(record_ids)
        found = set(await rows_of(self.table, [r for r in record_ids if r not in known]))
        accepted = [change for change in changes if change.record_id in known or change.record_id in found]
        if accepted:
            await self._outbox.append(accepted, found)
            self._flusher.wake()
        return [record_id for record_id in record_ids if record_id not in known and record_id not in found]

    async def counts(self) -> Counts:
        return await self._counts.get()

    def backlog(self) -> Backlog | None:
        return self._outbox.backlog()

    def feishu_usage(self) -> FeishuUsage | None:
        return self.table.usage()

    async def newest_failed(self, limit: int) -> TaskPage:
        """The newest FAILED tasks (by finish time) and, as the total, how many there are: one search."""
        await self._flusher.flush()  # a failure reported is one, whatever the table says yet
        page = await self.table.search(**failed_search(self._schema), page_size=min(limit, MAX_PAGE))
        items = [self._schema.decode(record_id, fields) for record_id, fields in page.records]
        return TaskPage(items=items, next_page_token=page.page_token, total=page.total)

    async def pending(self, limit: int) -> list[TaskRecord]:
        await self._flusher.flush()  # a task reported finished must not be picked again
        return await self._search_all(pick_search(self._schema), limit=limit)

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        if not self.supports_leases:
            return []
        await self._flusher.flush()  # a task reported finished is no longer PROCESSING, whatever the table said
        return await self._search_all(lease_search(claimed_on_or_before))

    @property
    def supports_leases(self) -> bool:
        return self._schema.supports_leases

    async def page(
        self, status: TaskStatus | None, limit: int, page_token: str | None, where: TaskFilter = NO_FILTER
    ) -> TaskPage:
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):  # refused here, not by a call that costs quota
            raise InvalidInput("page_token is not one this service gave out")
        if where.identifier is not None and page_token is None:
            known = await self._by_index(status, where)
            if known is not None:
                return known
        await self._flusher.flush()  # the page and its total count every report accepted so far
        search = count_search(status) if where == NO_FILTER else filter_search(status, where, self._schema)
        try:
            page = await self.table.search(**search, page_size=min(limit, MAX_PAGE), page_token=page_token)
        except StoreRejected as exc:
            if page_token:
                raise InvalidInput(f"page_token was refused: {exc.detail}") from None
            raise
        items = [self._schema.decode(record_id, fields) for record_id, fields in page.records]
        if where.created_bounded:  # the search compared whole days: the exact time is compared here
            items = [record for record in items if where.matches(record)]
        total = None if where.created_bounded else page.total
        return TaskPage(items=items, next_page_token=page.page_token, total=total)

    async def _by_index(self, status: TaskStatus | None, where: TaskFilter) -> TaskPage | None:
        """The task of an identifier the index knows, read by record id (no search); None: ask the table."""
        entry = self.index.lookup([where.identifier or ""]).get(where.identifier or "")
        if entry is None or entry.state is State.WRITING:
            return None
        found = await self.get([entry.record_id]) if entry.record_id else {}
        items = [r for r in found.values() if (status is None or r.status is status) and where.matches(r)]
        return TaskPage(items=items, next_page_token=None, total=len(items))

    async def _search_all(self, search: dict[str, Any], limit: int | None = None) -> list[TaskRecord]:
        records: list[TaskRecord] = []
        token = None
        while limit is None or len(records) < limit:
            page_size = MAX_PAGE if limit is None else min(MAX_PAGE, limit)
            page = await self.table.search(**search, page_size=page_size, page_token=token)
            records += [self._schema.decode(record_id, fields) for record_id, fields in page.records]
            if not (token := page.page_token):
                break
        return records[:limit]

    # ---- pruning and the index ------------------------------------------------------------------------------

    async def prune(self, status: TaskStatus, created_before: datetime, *, dry_run: bool = False) -> int:
        await self._flusher.flush()  # a task reported finished is pruned with the others
        search = prune_search(status, created_before)  # whole days: the exact time is compared here
        doomed: list[tuple[str, str | None]] = []
        token = None
        while True:
            page = await self.table.search(**search, page_token=token)
            for record_id, fields in page.records:
                created = number(plain(fields.get(CREATED_AT)))
                if created is not None and created < to_ms(created_before):
                    doomed.append((record_id, plain(fields.get(IDENTIFIER)) or None))
            if not (token := page.page_token):
                break
        if dry_run:
            return len(doomed)
        # pruned in the index first: a crash between the two must not let a deleted task come back
        await asyncio.to_thread(
            self.index.mark_pruned, [identifier for _, identifier in doomed if is_identifier(identifier)]
        )
        for chunk in chunked([record_id for record_id, _ in doomed], MAX_DELETE):
            async with self._writer.turn():
                try:
                    await self.table.batch_delete(chunk)
                except RecordMissing:  # one went meanwhile (or an earlier try landed): the batch was refused whole
                    existing = list(await rows_of(self.table, chunk))
                    if existing:
                        await self.table.batch_delete(existing)
        return len(doomed)  # gone from the table, whoever deleted the last of them

    async def reindex(self) -> int:
        return await rebuild_index(self.table, self.index)

    def filter_shapes(self) -> dict[str, dict[str, Any]]:
        """One of every search the store sends, named, as keyword arguments for `FeishuTable.search`.

        Built by the helpers the real calls use, so a check can send each (with `page_size=1`) and see a filter
        Feishu refuses at set-up. The schema must be loaded (`open()` or `load_schema()`): the pick sorts by
        Priority only when that column exists, and lease recovery is left out when its columns are missing.
        """
        now = datetime.now(UTC)
        return {
            "pick": pick_search(self._schema),
            "count": count_search(TaskStatus.PENDING),
            "count_scan": status_scan(self._schema),
            "newest_failed": failed_search(self._schema),
            "page": count_search(None),
            **({"lease_recovery": lease_search(now)} if self.supports_leases else {}),
            "prune": prune_search(TaskStatus.SUCCESS, now),
            # every condition a list or a bulk action may send at once: the longest filtered page
            "filtered_page": filter_search(TaskStatus.FAILED, _every_filter(now, self._schema), self._schema),
            **rebuild_searches(),
            # a full chunk: the longest lookup filter the store sends
            "identifier_lookup": identifier_search(identifier_chunks(["0" * 64] * MAX_CONDITIONS)[0]),
        }


def _every_filter(now: datetime, schema: Schema) -> TaskFilter:
    """A filter using every bound (the priority ones only when the table has that column)."""
    bounds = {"priority": 1.0, "priority_min": 0.0, "priority_max": 2.0} if schema.has(PRIORITY) else {}
    return TaskFilter(created_after=now - timedelta(days=1), created_before=now, identifier="0" * 64, **bounds)
