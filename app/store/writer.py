"""The single writer of new rows to one Bitable table: requests coalesced into `batch_create` calls, one in flight.

A row goes: `submit` queues it → `_assemble_batches` holds the batch open (`_hold_open`), reserves its rows in the
index and encodes the body (`_reserve`) while the previous write is in flight → `_send_batches` writes it under the
write lock (`_write_batch`, `_create_rows` → `FeishuTable.batch_create`) → `_record_and_answer` marks the index,
then answers each waiting request.
"""

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from app.errors import StoreRejected, StoreUnavailable
from app.models import Stored
from app.store.columns import IDENTIFIER, plain
from app.store.feishu import FeishuTable, InvalidRows, MaybeApplied, create_body
from app.store.index import IdentifierIndex
from app.store.searches import find_identifiers

log = logging.getLogger(__name__)

MAX_CREATE = 1_000  # records per batch_create


@dataclass(frozen=True, slots=True)
class NewRow:
    """A new task's cells for the writer; `uncertain` when an earlier write of it may have landed: look first."""

    identifier: str
    cells: dict[str, Any]
    uncertain: bool = False


@dataclass(slots=True)
class _Job:
    """One new row waiting for the writer; `group` keeps one request's rows together."""

    identifier: str
    cells: dict[str, Any]
    future: asyncio.Future
    group: int
    uncertain: bool


@dataclass(slots=True)
class _Batch:
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


class BatchWriter:
    """Owns every write of new rows to one table, and the write lock the store's updates and prunes take a turn of."""

    def __init__(
        self,
        table: FeishuTable,
        index: IdentifierIndex,
        *,
        linger_seconds: float = 0.02,
        max_wait_seconds: float = 0.5,
    ):
        self._table = table
        self._index = index
        self._linger = linger_seconds
        self._max_wait = max_wait_seconds
        self._write_lock = asyncio.Lock()  # the docs advise one write at a time per table
        self._turn = asyncio.Event()  # set (and replaced) when a write starts, or a batch turns out to need none
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._ready: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1)  # the next write, prepared during this one
        self._idle = asyncio.Event()  # the sender has nothing in flight or ready: a partial batch may close
        self._assembling = False  # the assembler holds rows taken off the queue
        self._inflight: dict[str, asyncio.Future] = {}
        self._loops: asyncio.Task | None = None
        self._groups = 0
        self._streaming = False  # rows arrived while a batch_create was in flight
        self._creating = False

    # ---- verbs --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle the writes a crash or an outage left unanswered, then start writing."""
        await self._settle_unconfirmed()
        self._loops = asyncio.create_task(self._run(), name="bitable-writer")

    async def submit(self, rows: Sequence[NewRow]) -> list[Stored | BaseException]:
        """Write the rows, one result per row in order: its record, or the error it failed with.

        A row already being written (by this request or another) joins that write and answers `created=False`.
        """
        if self._loops is None or self._loops.done():  # nobody would ever answer
            down = StoreUnavailable("the Bitable writer is not running; send the request again", retry_after=5)
            return [down for _ in rows]
        self._groups += 1
        waits: dict[str, asyncio.Future] = {}
        mine: set[str] = set()
        for row in rows:
            if row.identifier in waits:
                continue
            if (joined := self._inflight.get(row.identifier)) is not None:
                waits[row.identifier] = joined
                continue
            future = asyncio.get_running_loop().create_future()
            self._inflight[row.identifier] = waits[row.identifier] = future
            mine.add(row.identifier)
            self._queue.append(_Job(row.identifier, row.cells, future, self._groups, row.uncertain))
        if mine:
            self._streaming = self._streaming or self._creating  # not a claim's update: that is no stream
            self._wake.set()
        if waits:  # asyncio.wait never cancels what it waits for: a client that hangs up leaves the shared write be
            await asyncio.wait(waits.values())
        results: list[Stored | BaseException] = []
        for row in rows:
            future = waits[row.identifier]
            if (exc := future.exception()) is not None:
                results.append(exc)
            else:
                stored = future.result()
                results.append(Stored(row.identifier, stored.record_id, stored.created and row.identifier in mine))
        return results

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """The write lock, after the rows already queued: a scraper waits on its ingest's answer, while a claim, a
        status report or a prune is background work. Bounded: it lets one batch go first, not a stream."""
        waiting = self._queue or self._assembling or not self._ready.empty()
        if waiting and self._loops is not None and not self._loops.done():
            await self._turn.wait()
        async with self._write_lock:
            yield

    async def close(self) -> None:
        """Stop writing; requests still waiting are answered 503 (their rows are settled at the next start)."""
        if self._loops is not None:
            self._loops.cancel()
            await asyncio.gather(self._loops, return_exceptions=True)
            self._loops = None
        self._stopped(StoreUnavailable("the service is stopping; send the request again", retry_after=5))

    def _stopped(self, exc: StoreUnavailable) -> None:
        """No writer any more: turns need not wait for it, and every waiting request is answered."""
        self._pass_turn()
        for future in self._inflight.values():  # unsent, or sent and unrecorded: reconciled at the next start
            if not future.done():
                _fail(future, exc)

    # ---- the two loops ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as loops:  # one loop failing stops the other: no half a writer
                loops.create_task(self._assemble_batches())
                loops.create_task(self._send_batches())
        finally:
            self._stopped(StoreUnavailable("the Bitable writer stopped; send the request again", retry_after=5))

    async def _assemble_batches(self) -> None:
        """Readies the next write while one is in flight: rows taken off the queue, reserved, their body encoded."""
        while True:
            await self._wake.wait()
            while self._ready.full():  # one write ready at a time: a second could not go sooner
                await self._turn.wait()
            if len(self._queue) < MAX_CREATE:  # a partial batch waits for the sender: rows arriving meanwhile join it
                await self._idle.wait()
                await self._hold_open()
            else:
                self._streaming = False  # a full batch: the next one looks at new arrivals afresh
            jobs = [self._queue.popleft() for _ in range(min(MAX_CREATE, len(self._queue)))]
            if not self._queue:
                self._wake.clear()
            self._assembling = True
            try:
                batch = await self._reserve(jobs)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("bitable writer: batch of %d failed", len(jobs))
                self._answer(jobs, exc=exc)
                batch = None
            self._assembling = False
            if batch is None:
                self._pass_turn()
                continue
            self._ready.put_nowait(batch)  # the slot is free: only this loop fills it
            self._idle.clear()

    async def _send_batches(self) -> None:
        """One write in flight; the last one's marks and answers are settled while the next is on its way."""
        answered: list[_Outcome] | None = None
        while True:
            if answered is not None and self._ready.empty():
                await self._record_and_answer(answered)
                answered = None
            if self._ready.empty():
                self._idle.set()
            batch = await self._ready.get()
            self._idle.clear()
            # not behind the lock: an update queued for it must not hold up answers already in hand
            recording = asyncio.ensure_future(self._record_and_answer(answered)) if answered is not None else None
            try:
                async with self._write_lock:
                    self._pass_turn()
                    self._creating = True
                    try:
                        answered = await self._write_batch(batch)
                    finally:
                        self._creating = False
                if recording is not None:
                    await recording
            finally:
                if recording is not None:
                    recording.cancel()  # a no-op once done; at close, what it had not settled is failed there

    # ---- the stages of one batch --------------------------------------------------------------------------------

    async def _hold_open(self) -> None:
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

    async def _reserve(self, jobs: list[_Job]) -> _Batch | None:
        """Answer rows an earlier write may have stored; reserve the rest in the index and encode their body."""
        uncertain = [job for job in jobs if job.uncertain]
        if uncertain:
            found = await find_identifiers(self._table, [job.identifier for job in uncertain])
            await asyncio.to_thread(self._index.mark_stored, found.items())
            self._answer([job for job in uncertain if job.identifier in found], found=found)
            jobs = [job for job in jobs if job.identifier not in found]
        if not jobs:
            return None
        body = create_body([job.cells for job in jobs])
        # write-ahead, durable: a crash from here on is reconciled at start
        await asyncio.to_thread(self._index.mark_writing, [job.identifier for job in jobs])
        return _Batch(jobs, body)

    async def _write_batch(self, batch: _Batch) -> list[_Outcome]:
        """What became of each group of rows: their record ids, or the error to answer them with."""
        outcomes: list[_Outcome] = []
        try:
            try:
                outcomes.append(await self._create_rows(batch.jobs, batch.body))
            except InvalidRows as exc:
                groups = [[j for j in batch.jobs if j.group == g] for g in dict.fromkeys(j.group for j in batch.jobs)]
                if len(groups) == 1:
                    outcomes.append(_Outcome(batch.jobs, {}, exc, refused=True))
                    return outcomes
                for jobs in groups:  # one request's bad row must not fail the requests it was batched with
                    try:
                        outcomes.append(await self._create_rows(jobs, create_body([job.cells for job in jobs])))
                    except InvalidRows as exc:
                        outcomes.append(_Outcome(jobs, {}, exc, refused=True))
        except Exception as exc:  # the writer must outlive any one batch; the rows stay reserved, looked up if resent
            if isinstance(exc, StoreUnavailable | StoreRejected):
                log.warning("bitable writer: batch of %d failed: %s", len(batch.jobs), exc.detail)
            else:
                log.exception("bitable writer: batch of %d failed", len(batch.jobs))
            answered = {id(job) for outcome in outcomes for job in outcome.jobs}
            outcomes.append(_Outcome([job for job in batch.jobs if id(job) not in answered], {}, exc))
        return outcomes

    async def _create_rows(self, jobs: list[_Job], body: bytes) -> _Outcome:
        """One create, every try with the same client_token; an answer that leaves the rows open is looked up."""
        try:
            return _Outcome(jobs, _match_created(jobs, await self._table.batch_create(body, str(uuid.uuid4()))))
        except MaybeApplied as exc:
            return _Outcome(jobs, await find_identifiers(self._table, [job.identifier for job in jobs]), exc.refusal)

    async def _record_and_answer(self, outcomes: list[_Outcome]) -> None:
        """Mark in the index what the table answered, then answer the requests: a lost mark reads as WRITING."""
        for outcome in outcomes:
            try:
                if outcome.found:
                    await asyncio.to_thread(self._index.mark_stored, outcome.found.items())
                if outcome.refused:  # only then is it certain nothing was written
                    await asyncio.to_thread(self._index.forget_writing, [job.identifier for job in outcome.jobs])
            except Exception as exc:
                log.exception("bitable writer: the index could not record a batch of %d", len(outcome.jobs))
                outcome = _Outcome(outcome.jobs, {}, exc)
            self._answer(outcome.jobs, found=outcome.found, created=True, exc=outcome.error)

    def _answer(
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
            if self._inflight.get(job.identifier) is job.future:  # never another request's newer write
                del self._inflight[job.identifier]
            if job.future.done():
                continue
            if found is not None and job.identifier in found:
                job.future.set_result(Stored(job.identifier, found[job.identifier], created=created))
            else:
                _fail(job.future, missing)

    def _pass_turn(self) -> None:
        """A write starts (or a batch needed none): a turn that let queued rows go first may go now."""
        self._turn.set()
        self._turn = asyncio.Event()

    async def _settle_unconfirmed(self) -> None:
        """Settle writes a crash or an outage left unanswered: keep what landed, forget the rest."""
        writing = self._index.writing()
        if not writing:
            return
        found = await find_identifiers(self._table, writing)
        self._index.mark_stored(found.items())
        self._index.forget_writing([i for i in writing if i not in found])
        log.info("reconciled %d unconfirmed writes: %d had landed", len(writing), len(found))


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # read: a request that hung up never will, and asyncio would log it as lost at exit


def _match_created(jobs: list[_Job], records: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Identifier → new record id, by the echoed Identifier, else by position when the counts agree."""
    wanted = {job.identifier for job in jobs}
    found = {}
    for record_id, fields in records:
        identifier = plain(fields.get(IDENTIFIER))
        if identifier in wanted:
            found[identifier] = record_id
    if len(found) < len(jobs) and len(records) == len(jobs):
        found = {job.identifier: record_id for job, (record_id, _) in zip(jobs, records, strict=True)}
    return found
