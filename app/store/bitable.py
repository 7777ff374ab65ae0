import asyncio
import itertools
import json
import logging
import math
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from app.config import Settings
from app.errors import InvalidInput, StoreRejected, StoreUnavailable
from app.models import NewTask, StatusChange, Stored, TaskPage, TaskRecord, TaskStatus
from app.store.feishu import FeishuTable, InvalidRows, MaybeApplied, Page, RecordMissing, create_body
from app.store.index import IdentifierIndex, State
from app.store.records import chunked, from_ms, now_ms, to_ms

log = logging.getLogger(__name__)

TEXT, NUMBER, SINGLE_SELECT, DATE = 1, 2, 3, 5
PLAIN_TYPES = {TEXT, NUMBER, SINGLE_SELECT, DATE}

IDENTIFIER, STATUS, PAYLOAD, CREATED_AT = "Identifier", "Status", "Payload", "CreatedAt"
PRIORITY, ATTEMPTS, CLAIMED_AT = "Priority", "Attempts", "ClaimedAt"
REQUIRED = {IDENTIFIER: TEXT, STATUS: SINGLE_SELECT, PAYLOAD: TEXT, CREATED_AT: DATE}
OPTIONAL = {PRIORITY: NUMBER, ATTEMPTS: NUMBER, CLAIMED_AT: DATE}
COLUMNS = {**REQUIRED, **OPTIONAL}
STATUS_OPTIONS = {"options": [{"name": status.value} for status in TaskStatus]}
# date and time, not the day alone (the field guide's date property: date_formatter, auto_fill)
DATE_AND_TIME = {"date_formatter": "yyyy/MM/dd HH:mm", "auto_fill": False}
COLUMN_PROPERTIES = {STATUS: STATUS_OPTIONS, CREATED_AT: DATE_AND_TIME, CLAIMED_AT: DATE_AND_TIME}

MAX_CREATE = 1_000  # records per batch_create / batch_update
MAX_GET = 100  # record ids per batch_get
MAX_DELETE = 500  # record ids per batch_delete
MAX_PAGE = 500  # search page_size
_PAGE_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # Feishu's page tokens are opaque, but printable ASCII
MAX_CONDITIONS = 50
MAX_FILTER_CHARS = 2_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
# two coins, four parts searched at once; doubled digits, as a pair that overlaps itself is a rarer find: P = 0.505
_REINDEX_COINS = (("00", "11", "22"), ("33", "44", "55"))
_NOT_EMPTY = {"field_name": IDENTIFIER, "operator": "isNotEmpty", "value": []}
_DAY = timedelta(days=1)


@dataclass(slots=True)
class _Job:
    """One new row waiting for the single writer; `group` keeps one request's rows together."""

    identifier: str
    row: dict[str, Any]
    future: asyncio.Future
    group: int
    uncertain: bool  # an earlier write of it may have landed: look before writing


@dataclass(slots=True)
class _Write:
    """A batch made ready for the table: its rows reserved in the index, its body encoded."""

    jobs: list[_Job]
    body: bytes


@dataclass(slots=True)
class _Outcome:
    """What became of some rows of a write: those in the table, and the error for the rest."""

    jobs: list[_Job]
    found: dict[str, str]  # identifier → record id
    error: Exception | None = None  # None: the rest are unconfirmed, answered as unavailable
    refused: bool = False  # the table refused these rows for their content: nothing of them was written


@dataclass(slots=True)
class _Schema:
    types: dict[str, int] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in COLUMNS and self.types.get(name) == COLUMNS[name]

    @property
    def mirrors(self) -> dict[str, int]:
        """Plain columns a same-named top-level payload key is copied into, for sorting and filtering."""
        return {name: t for name, t in self.types.items() if t in PLAIN_TYPES and name not in COLUMNS}


class BitableTaskStore:
    """The task pool in a Feishu Bitable, with a local identifier index for dedup."""

    def __init__(
        self,
        table: FeishuTable,
        index: IdentifierIndex,
        *,
        linger_seconds: float = 0.02,
        max_wait_seconds: float = 0.5,
    ):
        self.table = table
        self.index = index
        self._linger = linger_seconds
        self._max_wait = max_wait_seconds
        self._schema = _Schema()
        self._write_lock = asyncio.Lock()  # the docs advise one write at a time per table
        self._turn = asyncio.Event()  # set (and replaced) when a write starts, or a batch turns out to need none
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._ready: asyncio.Queue[_Write] = asyncio.Queue(maxsize=1)  # the next write, prepared during this one
        self._idle = asyncio.Event()  # the sender has nothing in flight or ready: a partial batch may close
        self._preparing = False  # the preparer holds rows taken off the queue
        self._inflight: dict[str, asyncio.Future] = {}
        self._writer: asyncio.Task | None = None
        self._groups = 0
        self._streaming = False  # rows arrived while a batch_create was in flight
        self._creating = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "BitableTaskStore":
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
        )
        index = IdentifierIndex(settings.data_dir / f"index-{settings.feishu_bitable_table_id}.db")
        return cls(
            table,
            index,
            linger_seconds=settings.feishu_write_linger_ms / 1000,
            max_wait_seconds=settings.feishu_write_max_wait_ms / 1000,
        )

    # ---- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.index.open()
            if self.index.complete:
                await self.load_schema()
            else:
                log.warning("identifier index missing or incomplete: rebuilding it from the table")
                await self._rebuild_and_load_schema()
            await self._reconcile_writing()
        except BaseException:
            self.index.close()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="bitable-writer")

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
        self._schema = _Schema({f.name: f.type for f in await self.table.list_fields()})
        wrong = [
            f"{name} (needs type {want}, has {self._schema.types.get(name, 'none')})"
            for name, want in REQUIRED.items()
            if self._schema.types.get(name) != want
        ]
        if wrong:
            raise StoreRejected(
                f"the Bitable table lacks required columns: {', '.join(wrong)}; run `python -m app setup-bitable`"
            )
        missing = [name for name in OPTIONAL if not self._schema.has(name)]
        if missing:
            log.warning(
                "optional columns missing or of another type: %s; priority ordering, attempts and lease recovery "
                "need them (`python -m app setup-bitable` adds them)",
                ", ".join(missing),
            )

    async def check(self) -> None:
        await self.table.list_fields()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
            self._turn.set()  # no writer to wait for any more
        stopping = StoreUnavailable("the service is stopping; send the request again", retry_after=5)
        for future in self._inflight.values():  # unsent, or sent and unrecorded: reconciled at the next start
            if not future.done():
                _fail(future, stopping)
        await self.table.aclose()
        self.index.close()

    # ---- adding, through the single writer ------------------------------------------------------

    async def add(self, tasks: Sequence[NewTask]) -> list[Stored]:
        known = self.index.lookup([task.identifier for task in tasks])
        self._groups += 1
        created_at = now_ms()
        waits: dict[str, asyncio.Future] = {}
        mine: set[str] = set()
        results: dict[str, Stored] = {}
        for task in tasks:
            entry = known.get(task.identifier)
            if task.identifier in results or task.identifier in waits:
                continue
            if entry is not None and entry.state is not State.WRITING:
                results[task.identifier] = Stored(task.identifier, entry.record_id, created=False)
            elif task.identifier in self._inflight:
                waits[task.identifier] = self._inflight[task.identifier]
            else:
                future = asyncio.get_running_loop().create_future()
                self._inflight[task.identifier] = waits[task.identifier] = future
                mine.add(task.identifier)
                row = self._row(task, created_at)
                self._queue.append(_Job(task.identifier, row, future, self._groups, uncertain=entry is not None))
        if mine:
            self._streaming = self._streaming or self._creating  # not a claim's update: that is no stream
            self._wake.set()
        if waits:  # asyncio.wait never cancels what it waits for: a client that hangs up leaves the shared write be
            await asyncio.wait(waits.values())
        failure: BaseException | None = None
        for identifier, future in waits.items():
            if (exc := future.exception()) is not None:
                failure = failure or exc
                continue
            outcome = future.result()
            results[identifier] = Stored(identifier, outcome.record_id, outcome.created and identifier in mine)
        if isinstance(failure, StoreUnavailable):  # a fresh error: the writer's one is shared by every waiter
            raise StoreUnavailable(failure.detail, retry_after=failure.retry_after, stored=[*results.values()])
        if failure is not None:
            raise failure
        return [results[task.identifier] for task in tasks]

    def _row(self, task: NewTask, created_at: int) -> dict[str, Any]:
        row = {}
        for name, column_type in self._schema.mirrors.items():
            if name in task.payload:
                value = _mirror_value(task.payload[name], column_type)
                if value is not None:
                    row[name] = value
        row |= {IDENTIFIER: task.identifier, STATUS: task.status.value, PAYLOAD: task.canonical, CREATED_AT: created_at}
        if task.priority is not None and self._schema.has(PRIORITY):
            row[PRIORITY] = task.priority
        if task.claimed_at is not None:
            row |= self._claim_fields(task.claimed_at, 1)
        return row

    def _claim_fields(self, claimed_at: Any, attempts: int | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if claimed_at is not None and self._schema.has(CLAIMED_AT):
            fields[CLAIMED_AT] = to_ms(claimed_at)
        if attempts is not None and self._schema.has(ATTEMPTS):
            fields[ATTEMPTS] = attempts
        return fields

    async def _write_loop(self) -> None:
        async with asyncio.TaskGroup() as loops:  # one loop failing stops the other: no half a writer
            loops.create_task(self._prepare_loop())
            loops.create_task(self._send_loop())

    async def _prepare_loop(self) -> None:
        """Readies the next write while one is in flight: rows taken off the queue, reserved, their body encoded."""
        while True:
            await self._wake.wait()
            while self._ready.full():  # one write ready at a time: a second could not go sooner
                await self._turn.wait()
            if len(self._queue) < MAX_CREATE:  # a partial batch waits for the sender: rows arriving meanwhile join it
                await self._idle.wait()
                await self._fill_batch()
            else:
                self._streaming = False  # a full batch: the next one looks at new arrivals afresh
            batch = [self._queue.popleft() for _ in range(min(MAX_CREATE, len(self._queue)))]
            if not self._queue:
                self._wake.clear()
            self._preparing = True
            try:
                write = await self._prepare(batch)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("bitable writer: batch of %d failed", len(batch))
                self._done(batch, exc=exc)
                write = None
            self._preparing = False
            if write is None:
                self._next_turn()
                continue
            self._ready.put_nowait(write)  # the slot is free: only this loop fills it
            self._idle.clear()

    async def _send_loop(self) -> None:
        """One write in flight; the last one's marks and answers are settled while the next is on its way."""
        answered: list[_Outcome] | None = None
        while True:
            if answered is not None and self._ready.empty():
                await self._finish(answered)
                answered = None
            if self._ready.empty():
                self._idle.set()
            write = await self._ready.get()
            self._idle.clear()
            # not behind the lock: an update queued for it must not hold up answers already in hand
            finishing = asyncio.ensure_future(self._finish(answered)) if answered is not None else None
            try:
                async with self._write_lock:
                    self._next_turn()
                    self._creating = True
                    try:
                        answered = await self._send(write)
                    finally:
                        self._creating = False
                if finishing is not None:
                    await finishing
            finally:
                if finishing is not None:
                    finishing.cancel()  # a no-op once done; at close, what it had not settled is failed there

    async def _fill_batch(self) -> None:
        """Hold the batch open so concurrent ingests share one call: writes, not waits, are the scarce resource.

        In a stream (rows came in while the last write was in flight) it fills to 1,000 rows or `max_wait`;
        otherwise it closes at the first quiet gap of `linger`, so a lone request waits only that long.
        """
        streaming, self._streaming = self._streaming, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while self._linger and len(self._queue) < MAX_CREATE and loop.time() < deadline:
            before = len(self._queue)
            await asyncio.sleep(self._linger)
            if not streaming and len(self._queue) == before:
                return

    async def _prepare(self, batch: list[_Job]) -> "_Write | None":
        """Answer rows an earlier write may have stored; reserve the rest in the index and encode their body."""
        uncertain = [job for job in batch if job.uncertain]
        if uncertain:
            found = await self._find_identifiers([job.identifier for job in uncertain])
            await asyncio.to_thread(self.index.mark_stored, found.items())
            self._done([job for job in uncertain if job.identifier in found], found=found)
            batch = [job for job in batch if job.identifier not in found]
        if not batch:
            return None
        body = create_body([job.row for job in batch])
        # write-ahead, durable: a crash from here on is reconciled at start
        await asyncio.to_thread(self.index.mark_writing, [job.identifier for job in batch])
        return _Write(batch, body)

    async def _send(self, write: "_Write") -> list["_Outcome"]:
        """What became of each group of rows: their record ids, or the error to answer them with."""
        outcomes: list[_Outcome] = []
        try:
            try:
                outcomes.append(await self._create(write.jobs, write.body))
            except InvalidRows as exc:
                groups = [[j for j in write.jobs if j.group == g] for g in dict.fromkeys(j.group for j in write.jobs)]
                if len(groups) == 1:
                    outcomes.append(_Outcome(write.jobs, {}, exc, refused=True))
                    return outcomes
                for jobs in groups:  # one request's bad row must not fail the requests it was batched with
                    try:
                        outcomes.append(await self._create(jobs, create_body([job.row for job in jobs])))
                    except InvalidRows as exc:
                        outcomes.append(_Outcome(jobs, {}, exc, refused=True))
        except Exception as exc:  # the writer must outlive any one batch; the rows stay reserved, looked up if resent
            if isinstance(exc, StoreUnavailable | StoreRejected):
                log.warning("bitable writer: batch of %d failed: %s", len(write.jobs), exc.detail)
            else:
                log.exception("bitable writer: batch of %d failed", len(write.jobs))
            answered = {id(job) for outcome in outcomes for job in outcome.jobs}
            outcomes.append(_Outcome([job for job in write.jobs if id(job) not in answered], {}, exc))
        return outcomes

    async def _create(self, jobs: list[_Job], body: bytes) -> "_Outcome":
        """One create, every try with the same client_token; an answer that leaves the rows open is looked up."""
        try:
            return _Outcome(jobs, _match_created(jobs, await self.table.batch_create(body, str(uuid.uuid4()))))
        except MaybeApplied as exc:
            return _Outcome(jobs, await self._find_identifiers([job.identifier for job in jobs]), exc.refusal)

    async def _finish(self, outcomes: list["_Outcome"]) -> None:
        """Mark in the index what the table answered, then answer the requests: a lost mark reads as WRITING."""
        for outcome in outcomes:
            try:
                if outcome.found:
                    await asyncio.to_thread(self.index.mark_stored, outcome.found.items())
                if outcome.refused:  # only then is it certain nothing was written
                    await asyncio.to_thread(self.index.forget_writing, [job.identifier for job in outcome.jobs])
            except Exception as exc:
                log.exception("bitable writer: the index could not record a batch of %d", len(outcome.jobs))
                outcome = _Outcome(outcome.jobs, {}, exc)
            self._done(outcome.jobs, found=outcome.found, created=True, exc=outcome.error)

    def _done(
        self,
        jobs: Sequence[_Job],
        *,
        found: dict[str, str] | None = None,
        created: bool = False,
        exc: BaseException | None = None,
    ) -> None:
        """Answer each waiting request once: a row found with its record id, the others with `exc` or as unavailable."""
        missing = exc or StoreUnavailable("Feishu did not confirm every row of a write; send them again")
        for job in jobs:
            self._inflight.pop(job.identifier, None)
            if job.future.done():
                continue
            if found is not None and job.identifier in found:
                job.future.set_result(Stored(job.identifier, found[job.identifier], created=created))
            else:
                _fail(job.future, missing)

    def _next_turn(self) -> None:
        """A write starts (or a batch needed none): a status update that let queued rows go first may go now."""
        self._turn.set()
        self._turn = asyncio.Event()

    async def _reconcile_writing(self) -> None:
        """Settle writes a crash or an outage left unanswered: keep what landed, forget the rest."""
        writing = self.index.writing()
        if not writing:
            return
        found = await self._find_identifiers(writing)
        self.index.mark_stored(found.items())
        self.index.forget_writing([i for i in writing if i not in found])
        log.info("reconciled %d unconfirmed writes: %d had landed", len(writing), len(found))

    async def _find_identifiers(self, identifiers: Sequence[str]) -> dict[str, str]:
        """Identifier → record id for those present in the table, by `or` searches within the filter limits."""
        found: dict[str, str] = {}
        for chunk in _filter_chunks(list(identifiers)):
            search, token = _identifier_search(chunk), None
            while True:
                page = await self.table.search(**search, page_token=token)
                for record_id, fields in page.records:
                    found.setdefault(_plain(fields.get(IDENTIFIER)), record_id)
                if not (token := page.page_token):
                    break
        return {i: found[i] for i in identifiers if i in found}

    # ---- reading and updating -------------------------------------------------------------------

    async def lookup(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        return {i: e.record_id for i, e in self.index.lookup(identifiers).items() if e.state is not State.WRITING}

    async def get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        found = {}
        for chunk in chunked(list(dict.fromkeys(record_ids)), MAX_GET):
            for record_id, fields in await self.table.batch_get(chunk):
                found[record_id] = self._decode(record_id, fields)
        return found

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        not_found: list[str] = []
        for chunk in chunked(list(changes), MAX_CREATE):
            rows = [(c.record_id, self._change_fields(c)) for c in chunk]
            async with self._update_turn():
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

    @asynccontextmanager
    async def _update_turn(self) -> AsyncIterator[None]:
        """The write lock, after the rows already queued for the writer: a scraper waits on its ingest's answer,
        while a claim or a status report is background work. Bounded: it lets one batch go first, not a stream."""
        waiting = self._queue or self._preparing or not self._ready.empty()
        if waiting and self._writer is not None and not self._writer.done():
            await self._turn.wait()
        async with self._write_lock:
            yield

    def _change_fields(self, change: StatusChange) -> dict[str, Any]:
        fields = {STATUS: change.status.value, **self._claim_fields(change.claimed_at, change.attempts)}
        if change.identifier:
            fields[IDENTIFIER] = change.identifier
        return fields

    async def pending(self, limit: int) -> list[TaskRecord]:
        return await self._search_all(self._pick_search(), limit=limit)

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        if not self.supports_leases:
            return []
        return await self._search_all(self._lease_search(claimed_on_or_before))

    @property
    def supports_leases(self) -> bool:
        return self._schema.has(CLAIMED_AT) and self._schema.has(ATTEMPTS)

    def filter_shapes(self) -> dict[str, dict[str, Any]]:
        """One of every search the store sends, named, as keyword arguments for `FeishuTable.search`.

        Built by the helpers the real calls use, so a check can send each (with `page_size=1`) and see a filter
        Feishu refuses at set-up. The schema must be loaded (`open()` or `load_schema()`): the pick sorts by
        Priority only when that column exists, and lease recovery is left out when its columns are missing.
        """
        now = datetime.now(UTC)
        return {
            "pick": self._pick_search(),
            "count": _count_search(TaskStatus.PENDING),
            "page": _count_search(None),
            **({"lease_recovery": self._lease_search(now)} if self.supports_leases else {}),
            "prune": _prune_search(TaskStatus.SUCCESS, now),
            "index_count": _census_search(),
            **{f"index_part_{n}": _part_search(part) for n, part in enumerate(_reindex_parts(), 1)},
            # a full chunk: the longest lookup filter the store sends
            "identifier_lookup": _identifier_search(_filter_chunks(["0" * 64] * MAX_CONDITIONS)[0]),
        }

    def _pick_search(self) -> dict[str, Any]:
        sort = [{"field_name": PRIORITY, "desc": True}] if self._schema.has(PRIORITY) else []
        sort.append({"field_name": CREATED_AT, "desc": False})
        return {"filter_": _status_is(TaskStatus.PENDING), "sort": sort}

    def _lease_search(self, claimed_on_or_before: datetime) -> dict[str, Any]:
        filter_ = _status_is(TaskStatus.PROCESSING)
        filter_["conditions"].append(_on_or_before_day(CLAIMED_AT, claimed_on_or_before))
        return {"filter_": filter_}

    async def _search_all(self, search: dict[str, Any], limit: int | None = None) -> list[TaskRecord]:
        records: list[TaskRecord] = []
        token = None
        while limit is None or len(records) < limit:
            page_size = MAX_PAGE if limit is None else min(MAX_PAGE, limit)
            page = await self.table.search(**search, page_size=page_size, page_token=token)
            records += [self._decode(record_id, fields) for record_id, fields in page.records]
            if not (token := page.page_token):
                break
        return records[:limit]

    async def page(self, status: TaskStatus | None, limit: int, page_token: str | None) -> TaskPage:
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):  # refused here, not by a call that costs quota
            raise InvalidInput("page_token is not one this service gave out")
        try:
            page = await self.table.search(
                **_count_search(status), page_size=min(limit, MAX_PAGE), page_token=page_token
            )
        except StoreRejected as exc:
            if page_token:
                raise InvalidInput(f"page_token was refused: {exc.detail}") from None
            raise
        items = [self._decode(record_id, fields) for record_id, fields in page.records]
        return TaskPage(items=items, next_page_token=page.page_token, total=page.total)

    async def prune(self, status: TaskStatus, created_before: datetime, *, dry_run: bool = False) -> int:
        search = _prune_search(status, created_before)  # whole days: the exact time is compared here
        doomed: list[tuple[str, str | None]] = []
        token = None
        while True:
            page = await self.table.search(**search, page_token=token)
            for record_id, fields in page.records:
                created = _number(_plain(fields.get(CREATED_AT)))
                if created is not None and created < to_ms(created_before):
                    doomed.append((record_id, _plain(fields.get(IDENTIFIER)) or None))
            if not (token := page.page_token):
                break
        if dry_run:
            return len(doomed)
        # pruned in the index first: a crash between the two must not let a deleted task come back
        await asyncio.to_thread(
            self.index.mark_pruned, [identifier for _, identifier in doomed if _is_identifier(identifier)]
        )
        for chunk in chunked([record_id for record_id, _ in doomed], MAX_DELETE):
            async with self._write_lock:
                try:
                    await self.table.batch_delete(chunk)
                except RecordMissing:  # one went meanwhile (or an earlier try landed): the batch was refused whole
                    existing = [rid for ids in chunked(chunk, MAX_GET) for rid, _ in await self.table.batch_get(ids)]
                    if existing:
                        await self.table.batch_delete(existing)
        return len(doomed)  # gone from the table, whoever deleted the last of them

    async def reindex(self) -> int:
        """Read every Identifier into the index, in parallel parts; identifiers already known stay."""
        self.index.mark_complete(False)
        census = self.table.search(**_census_search(), page_size=1)
        *totals, expected = await _gather_cancelling(
            *(self._reindex_part(filter_) for filter_ in _reindex_parts()), census
        )
        if None in totals or sum(totals) != expected.total:
            # the parts rest on `contains` being a substring test, which Feishu's docs do not spell out
            log.warning("index rebuild: the parts held %s rows, the table %s; reading it whole", totals, expected.total)
            await self._reindex_part(None)
        self.index.mark_complete(True)
        return self.index.count()

    async def _reindex_part(self, filter_: dict[str, Any] | None) -> int | None:
        """Page through one part, answering its total; a page goes into the index while the next is on its way."""

        def fetch(token: str | None, rows_left: float) -> asyncio.Future[Page]:
            # the part with the most rows left goes first: the parts end together, none pages alone at the end
            search = self.table.search(
                **_part_search(filter_), page_size=MAX_PAGE, page_token=token, priority=rows_left
            )
            return asyncio.ensure_future(search)

        page, read = await fetch(None, math.inf), 0
        total = page.total
        while True:
            read += len(page.records)
            following = fetch(page.page_token, (page.total or 0) - read) if page.page_token else None
            try:
                pairs = [(_plain(fields.get(IDENTIFIER)), rid) for rid, fields in page.records]
                # in a thread: ~15 ms of SQLite a page would hold up the other parts' calls
                await asyncio.to_thread(self.index.mark_stored, [(i, r) for i, r in pairs if _is_identifier(i)])
            except BaseException:
                if following is not None:
                    following.cancel()
                raise
            if following is None:
                return total
            page = await following

    def _decode(self, record_id: str, fields: dict[str, Any]) -> TaskRecord:
        plain = {name: _plain(value) for name, value in fields.items()}
        payload = _payload(plain.get(PAYLOAD))
        if payload is None:  # typed in by hand: its plain columns are the payload
            payload = {k: v for k, v in plain.items() if k not in COLUMNS and self._schema.types.get(k) in PLAIN_TYPES}
        status = plain.get(STATUS)
        return TaskRecord(
            record_id=record_id,
            identifier=plain.get(IDENTIFIER) or None,
            status=TaskStatus(status) if status in TaskStatus.__members__ else None,
            payload=payload,
            priority=_number(plain.get(PRIORITY)),
            created_at=from_ms(_number(plain.get(CREATED_AT))),
            claimed_at=from_ms(_number(plain.get(CLAIMED_AT))),
            attempts=int(_number(plain.get(ATTEMPTS)) or 0),
        )


async def setup_columns(table: FeishuTable) -> tuple[list[str], list[str]]:
    """Create every missing service column with its type and property; answer (created, wrong type)."""
    existing = {f.name: f.type for f in await table.list_fields()}
    created, wrong = [], []
    for name, column_type in COLUMNS.items():
        if name not in existing:
            await table.create_field(name, column_type, COLUMN_PROPERTIES.get(name))
            created.append(name)
        elif existing[name] != column_type:
            wrong.append(f"{name} (type {existing[name]}, needs {column_type})")
    return created, wrong


# ---- value shapes -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Bitable's read shapes back to plain values: text segments are joined, the rest kept."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "".join(str(segment.get("text", "")) for segment in value)
    if isinstance(value, dict) and "text" in value:
        return value["text"]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _payload(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _mirror_value(value: Any, column_type: int) -> Any:
    """The value as the column takes it, or None when it does not fit (never fail a write over a mirror)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if column_type == TEXT and (isinstance(value, str) or is_number):
        return str(value) if value != "" else None
    if column_type == NUMBER and is_number:
        return value
    if column_type == SINGLE_SELECT and isinstance(value, str) and value:
        return value
    if column_type == DATE and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _is_identifier(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


async def _gather_cancelling(*steps: Awaitable[Any]) -> list[Any]:
    """Like gather, but the first error cancels the other steps before it is raised."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _reindex_parts() -> list[dict[str, Any]]:
    """Search filters that split the rows holding an identifier into disjoint parts, to page through at once.

    One search stream pages at one call a round trip (100 ms: 10/s); Feishu allows 20 searches a second.
    Whether a sha256 hex holds one of three given digit pairs is a fair coin; each part is one outcome of
    the coins: `contains` any pair of the coins it holds, `doesNotContain` every pair of the rest. Every
    non-empty Identifier matches exactly one part (parts of 25.0, 25.5, 25.6 and 23.9% of random hashes),
    and reindex() checks that against a count. Digits only: case folding cannot move a row between parts.
    """
    parts = []
    for outcome in itertools.product((True, False), repeat=len(_REINDEX_COINS)):
        coins = list(zip(_REINDEX_COINS, outcome, strict=True))
        lacked = [pair for pairs, held in coins if not held for pair in pairs]
        filter_: dict[str, Any] = {
            "conjunction": "and",
            "conditions": [_NOT_EMPTY, *(_condition(IDENTIFIER, "doesNotContain", pair) for pair in lacked)],
        }
        if any(held for _, held in coins):
            filter_["children"] = [
                {"conjunction": "or", "conditions": [_condition(IDENTIFIER, "contains", pair) for pair in pairs]}
                for pairs, held in coins
                if held
            ]
        parts.append(filter_)
    return parts


def _condition(field_name: str, operator: str, value: str) -> dict[str, Any]:
    return {"field_name": field_name, "operator": operator, "value": [value]}


def _is(field_name: str, value: str) -> dict[str, Any]:
    return _condition(field_name, "is", value)


def _status_is(status: TaskStatus) -> dict[str, Any]:
    return {"conjunction": "and", "conditions": [_is(STATUS, status.value)]}


def _on_or_before_day(field_name: str, moment: datetime) -> dict[str, Any]:
    """Dated on or before that day: dates filter by whole days, with is/isEmpty/isNotEmpty/isGreater/isLess only."""
    return {"field_name": field_name, "operator": "isLess", "value": ["ExactDate", str(to_ms(moment + _DAY))]}


def _count_search(status: TaskStatus | None) -> dict[str, Any]:
    """A page in creation order (the API's list, and with page_size=1 the count of a status)."""
    return {"filter_": _status_is(status) if status else None, "sort": [{"field_name": CREATED_AT, "desc": False}]}


def _prune_search(status: TaskStatus, created_before: datetime) -> dict[str, Any]:
    filter_ = _status_is(status)
    filter_["conditions"].append(_on_or_before_day(CREATED_AT, created_before))
    return {"filter_": filter_, "field_names": [IDENTIFIER, CREATED_AT]}


def _census_search() -> dict[str, Any]:
    return {"filter_": {"conjunction": "and", "conditions": [_NOT_EMPTY]}, "field_names": [IDENTIFIER]}


def _part_search(filter_: dict[str, Any] | None) -> dict[str, Any]:
    return {"filter_": filter_, "field_names": [IDENTIFIER]}


def _identifier_search(identifiers: list[str]) -> dict[str, Any]:
    return {
        "filter_": {"conjunction": "or", "conditions": [_is(IDENTIFIER, i) for i in identifiers]},
        "field_names": [IDENTIFIER],
    }


def _filter_chunks(identifiers: list[str]) -> list[list[str]]:
    """Split into `or` filters that stay under 50 conditions and 2,000 characters of JSON."""
    overhead = len(json.dumps({"conjunction": "or", "conditions": []}))
    per = len(json.dumps(_is(IDENTIFIER, "0" * 64))) + 2
    size = max(1, min(MAX_CONDITIONS, (MAX_FILTER_CHARS - overhead) // per))
    return [identifiers[i : i + size] for i in range(0, len(identifiers), size)]


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # read: a request that hung up never will, and asyncio would log it as lost at exit


def _match_created(jobs: list[_Job], records: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Identifier → new record id, by the echoed Identifier, else by position when the counts agree."""
    wanted = {job.identifier for job in jobs}
    found = {}
    for record_id, fields in records:
        identifier = _plain(fields.get(IDENTIFIER))
        if identifier in wanted:
            found[identifier] = record_id
    if len(found) < len(jobs) and len(records) == len(jobs):
        found = {job.identifier: record_id for job, (record_id, _) in zip(jobs, records, strict=True)}
    return found
