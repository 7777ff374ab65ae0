"""The task pool in a Feishu Bitable: reads and updates here, new rows through the writer, dedup by the index."""

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from app.config import Settings
from app.errors import InvalidInput, StoreRejected, StoreUnavailable
from app.models import Added, Backlog, Counts, NewTask, StatusChange, Stored, TaskPage, TaskRecord, TaskStatus
from app.paths import DataDir
from app.store.chunks import chunked
from app.store.columns import CREATED_AT, IDENTIFIER, Schema, is_identifier, load_schema, number, plain
from app.store.feishu import FeishuTable, RecordMissing
from app.store.index import IdentifierIndex, State
from app.store.rebuild import rebuild_index, rebuild_searches
from app.store.searches import (
    MAX_CONDITIONS,
    MAX_PAGE,
    count_search,
    identifier_chunks,
    identifier_search,
    lease_search,
    pick_search,
    prune_search,
)
from app.store.timestamps import now_ms, to_ms
from app.store.windows import PoolCounts, TableReadiness
from app.store.writer import BatchWriter, NewRow

log = logging.getLogger(__name__)

MAX_UPDATE = 1_000  # records per batch_update
MAX_GET = 100  # record ids per batch_get
MAX_DELETE = 500  # record ids per batch_delete
_PAGE_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # Feishu's page tokens are opaque, but printable ASCII


class BitableTaskStore:
    """The task pool in a Feishu Bitable, with a local identifier index for dedup."""

    def __init__(
        self,
        table: FeishuTable,
        index: IdentifierIndex,
        *,
        linger_seconds: float = 0.02,
        max_wait_seconds: float = 0.5,
        ready_check_seconds: float = 0.0,
        stats_cache_seconds: float = 0.0,
    ):
        self.table = table
        self.index = index
        self._schema = Schema()
        self._writer = BatchWriter(table, index, linger_seconds=linger_seconds, max_wait_seconds=max_wait_seconds)
        self._readiness = TableReadiness(table, ready_check_seconds)
        self._counts = PoolCounts(table, self.page, self.backlog, stats_cache_seconds)

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
        index = IdentifierIndex(DataDir(settings.data_dir).index_db(settings.feishu_bitable_table_id))
        return cls(
            table,
            index,
            linger_seconds=settings.feishu_write_linger_ms / 1000,
            max_wait_seconds=settings.feishu_write_max_wait_ms / 1000,
            ready_check_seconds=settings.ready_check_seconds,
            stats_cache_seconds=settings.stats_cache_seconds,
        )

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.index.open()
            if self.index.complete:
                await self.load_schema()
            else:
                log.warning("identifier index missing or incomplete: rebuilding it from the table")
                await self._rebuild_and_load_schema()
            await self._writer.start()
        except BaseException:
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
        await self._writer.close()
        await self.table.aclose()
        self.index.close()

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
        found = {}
        for chunk in chunked(list(dict.fromkeys(record_ids)), MAX_GET):
            for record_id, fields in await self.table.batch_get(chunk):
                found[record_id] = self._schema.decode(record_id, fields)
        return found

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        not_found: list[str] = []
        for chunk in chunked(list(changes), MAX_UPDATE):
            rows = [(c.record_id, self._schema.changed_cells(c)) for c in chunk]
            async with self._writer.turn():
                try:
                    await self.table.batch_update(rows)
                except RecordMissing:  # the whole batch was refused: find the strangers, update the rest
                    existing = {
                        rid
                        for ids in chunked([r for r, _ in rows], MAX_GET)
                        for rid, _ in await self.table.batch_get(ids)
                    }
                    not_found += [record_id for record_id, _ in rows if record_id not in existing]
                    rows = [row for row in rows if row[0] in existing]
                    if rows:
                        await self.table.batch_update(rows)
            await asyncio.to_thread(
                self.index.mark_stored,
                [(c.identifier, c.record_id) for c in chunk if c.identifier and c.record_id not in not_found],
            )
        return not_found

    async def report(self, changes: Sequence[StatusChange]) -> list[str]:
        return await self.update(changes)

    async def counts(self) -> Counts:
        return await self._counts.get()

    def backlog(self) -> Backlog | None:
        return None

    async def pending(self, limit: int) -> list[TaskRecord]:
        return await self._search_all(pick_search(self._schema), limit=limit)

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        if not self.supports_leases:
            return []
        return await self._search_all(lease_search(claimed_on_or_before))

    @property
    def supports_leases(self) -> bool:
        return self._schema.supports_leases

    async def page(self, status: TaskStatus | None, limit: int, page_token: str | None) -> TaskPage:
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):  # refused here, not by a call that costs quota
            raise InvalidInput("page_token is not one this service gave out")
        try:
            search = count_search(status)
            page = await self.table.search(**search, page_size=min(limit, MAX_PAGE), page_token=page_token)
        except StoreRejected as exc:
            if page_token:
                raise InvalidInput(f"page_token was refused: {exc.detail}") from None
            raise
        items = [self._schema.decode(record_id, fields) for record_id, fields in page.records]
        return TaskPage(items=items, next_page_token=page.page_token, total=page.total)

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
                    existing = [rid for ids in chunked(chunk, MAX_GET) for rid, _ in await self.table.batch_get(ids)]
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
            "page": count_search(None),
            **({"lease_recovery": lease_search(now)} if self.supports_leases else {}),
            "prune": prune_search(TaskStatus.SUCCESS, now),
            **rebuild_searches(),
            # a full chunk: the longest lookup filter the store sends
            "identifier_lookup": identifier_search(identifier_chunks(["0" * 64] * MAX_CONDITIONS)[0]),
        }
