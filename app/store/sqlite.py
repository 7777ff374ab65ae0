"""The task pool in one SQLite file under DATA_DIR: the embedded default, no account, no server."""

import asyncio
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from app.errors import InvalidInput, StoreUnavailable
from app.identity import canonical_json
from app.models import (
    NO_FILTER,
    RECENT_FAILURES,
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
    utc_now,
)
from app.store.chunks import chunked
from app.store.sqlite_file import SqliteFile, local_storage
from app.store.timestamps import from_ms, now_ms, to_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    record_id   TEXT PRIMARY KEY,
    identifier  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    priority    REAL,
    created_at  INTEGER NOT NULL,
    claimed_at  INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    result      TEXT,
    error       TEXT,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, priority DESC, created_at);
-- identifiers of pruned rows: still duplicates forever
CREATE TABLE IF NOT EXISTS pruned (identifier TEXT PRIMARY KEY);
"""
_INSERTED = "record_id, identifier, status, payload, priority, created_at, claimed_at, attempts"
_COLUMNS = f"{_INSERTED}, result, error, finished_at"
# columns added after the first release: a tasks.db made before them gets them at open
_ADDED = {"result": "TEXT", "error": "TEXT", "finished_at": "INTEGER"}
_UPDATE = (
    "UPDATE tasks SET status = ?, claimed_at = COALESCE(?, claimed_at), attempts = COALESCE(?, attempts),"
    " result = COALESCE(?, result), error = COALESCE(?, error), finished_at = COALESCE(?, finished_at)"
    " WHERE record_id = ?"
)
_CHUNK = 500  # well under SQLite's bound-parameter limit
_CACHE_KIB = 32 * 1024  # the identifier index's pages stay in memory well past 100k tasks
# a checkpoint copies each page once however often the WAL holds it: rarer ones copy the index's hot pages less
_CHECKPOINT_PAGES = 10_000
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # in byte order: ids sort by time
T = TypeVar("T")


class SqliteTaskStore:
    """The embedded default: one SQLite file under DATA_DIR, no account, no server.

    Every statement runs on one thread of its own, off the event loop. Concurrent `add` calls share a
    transaction (group commit): one fsync answers all of them, and none is answered before it.
    """

    def __init__(self, path: Path):
        self._file = SqliteFile(path, _SCHEMA)
        self._thread: ThreadPoolExecutor | None = None
        self._waiting: list[tuple[Sequence[NewTask], asyncio.Future[list[Stored]]]] = []
        self._committer: asyncio.Task | None = None
        self._last_id = 0

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-store")
        await self._run(self._open)

    def _open(self) -> None:
        self._file.open()
        self.db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self.db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        if self._missing_columns():
            with self._transaction():  # looked at again inside: another process may have added them meanwhile
                for name in self._missing_columns():
                    self.db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {_ADDED[name]}")
        # the newest failures for /api/stats without a sort of every FAILED row; after the column may have been added
        self.db.execute("CREATE INDEX IF NOT EXISTS failed_by_finish ON tasks (finished_at) WHERE status = 'FAILED'")

    def _missing_columns(self) -> list[str]:
        have = {row[1] for row in self.db.execute("PRAGMA table_info(tasks)")}
        return [name for name in _ADDED if name not in have]

    async def close(self) -> None:
        if self._thread is not None:
            await self._run(self._file.close)
            self._thread.shutdown()
            self._thread = None

    async def check(self) -> None:
        await self._run(lambda: self.db.execute("SELECT 1").fetchone())

    @property
    def db(self) -> sqlite3.Connection:
        return self._file.db

    async def _run(self, work: Callable[..., T], *args) -> T:
        if self._thread is None:
            raise RuntimeError(f"{self._file.path.name} is not open")
        with local_storage("the SQLite store"):  # locked, disk full, I/O, read-only, id clash
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    def _transaction(self):
        return self._file.transaction(durable=True)  # an answered ingest survives a power cut

    def _seen(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for chunk in chunked(list(identifiers), _CHUNK):
            marks = ",".join("?" * len(chunk))
            for identifier, record_id in self.db.execute(
                f"SELECT identifier, record_id FROM tasks WHERE identifier IN ({marks})", chunk
            ):
                found[identifier] = record_id
            for (identifier,) in self.db.execute(f"SELECT identifier FROM pruned WHERE identifier IN ({marks})", chunk):
                found.setdefault(identifier, None)
        return found

    async def add(self, tasks: Sequence[NewTask]) -> Added:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((tasks, waiter))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        try:
            return Added(await waiter)
        except StoreUnavailable as exc:  # the group is one transaction: nothing of it landed
            return Added([], exc)

    async def _commit_waiting(self) -> None:
        """Commit what waits, in one transaction; calls that arrive meanwhile go in the next one."""
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    results = await self._run(self._add_group, [tasks for tasks, _ in group])
                except Exception as exc:
                    for _, waiter in group:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for (_, waiter), stored in zip(group, results, strict=True):
                    if not waiter.done():
                        waiter.set_result(stored)
        finally:
            self._committer = None

    def _add_group(self, batches: list[Sequence[NewTask]]) -> list[list[Stored]]:
        created_at = now_ms()
        with self._transaction():
            seen = self._seen([task.identifier for tasks in batches for task in tasks])
            record_ids = self._record_ids(sum(map(len, batches)))
            results, rows = [], []
            for tasks in batches:
                stored = []
                for task in tasks:
                    if task.identifier in seen:
                        stored.append(Stored(task.identifier, seen[task.identifier], created=False))
                        continue
                    record_id = seen[task.identifier] = next(record_ids)
                    claimed = to_ms(task.claimed_at) if task.claimed_at else None
                    rows.append(
                        (
                            record_id,
                            task.identifier,
                            task.status.value,
                            task.canonical,
                            task.priority,
                            created_at,
                            claimed,
                            1 if claimed else 0,
                        )
                    )
                    stored.append(Stored(task.identifier, record_id, created=True))
                results.append(stored)
            self.db.executemany(f"INSERT INTO tasks ({_INSERTED}) VALUES (?,?,?,?,?,?,?,?)", rows)
        return results

    def _record_ids(self, count: int) -> Iterator[str]:
        """Record ids shaped like Bitable's ("rec" + 14 letters or digits) that rise with time in this process.

        Rising ids append to the record-id index instead of dirtying one random page of it per row; the
        random low bits keep apart two processes that write the same file in the same millisecond.
        """
        start = max(self._last_id + 1, (time.time_ns() // 1_000_000 << 35) + secrets.randbits(35))
        self._last_id = start + count - 1
        high, prefix = -1, ""
        for value in range(start, start + count):
            top, low = divmod(value, _LOW)
            if top != high:
                high, prefix = top, "rec" + _digits(top, 5)
            yield prefix + _digits(low, 2)

    async def lookup(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        return await self._run(self._seen, identifiers)

    async def get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return await self._run(self._get, record_ids)

    def _get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        found = {}
        for chunk in chunked(list(record_ids), _CHUNK):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE record_id IN ({marks})", chunk):
                record = _record(row)
                found[record.record_id] = record
        return found

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        return await self._run(self._update, changes)

    def _update(self, changes: Sequence[StatusChange]) -> list[str]:
        """One transaction; a value a change does not carry keeps the stored one, as on Bitable."""
        not_found = []
        with self._transaction():
            for change in changes:
                values = [
                    change.status.value,
                    to_ms(change.claimed_at) if change.claimed_at else None,
                    change.attempts,
                    canonical_json(change.result) if change.result is not None else None,
                    change.error,
                    to_ms(change.finished_at) if change.finished_at else None,
                    change.record_id,
                ]
                if change.if_still is None:
                    updated = self.db.execute(_UPDATE, values).rowcount
                else:
                    updated = self.db.execute(f"{_UPDATE} AND status = ?", [*values, change.if_still.value]).rowcount
                if not updated:
                    not_found.append(change.record_id)
        return not_found

    async def set_priority(self, record_id: str, priority: int) -> TaskRecord | None:
        return await self._run(self._set_priority, record_id, priority)

    def _set_priority(self, record_id: str, priority: int) -> TaskRecord | None:
        with self._transaction():
            self.db.execute(
                "UPDATE tasks SET priority = ? WHERE record_id = ? AND status = 'PENDING'", (priority, record_id)
            )
            return self._get([record_id]).get(record_id)

    async def report(self, changes: Sequence[StatusChange]) -> list[str]:
        return await self.update(changes)  # one local transaction: durable and visible at once

    async def counts(self) -> Counts:
        return await self._run(self._counts)

    def _counts(self) -> Counts:
        found = dict(self.db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
        failed = self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks INDEXED BY failed_by_finish WHERE status = 'FAILED'"
            " ORDER BY finished_at DESC, rowid DESC LIMIT ?",
            [RECENT_FAILURES],
        ).fetchall()
        by_status = {status.value: found.get(status.value, 0) for status in TaskStatus}
        return Counts(by_status, utc_now(), tuple(_record(row) for row in failed))

    def backlog(self) -> Backlog | None:
        return None

    def feishu_usage(self) -> FeishuUsage | None:
        return None

    async def page(
        self, status: TaskStatus | None, limit: int, page_token: str | None, where: TaskFilter = NO_FILTER
    ) -> TaskPage:
        return await self._run(self._page, status, limit, _decode_token(page_token), where)

    def _page(self, status: TaskStatus | None, limit: int, after: int, where: TaskFilter) -> TaskPage:
        clause, args = _where(status, where)
        rows = self.db.execute(
            f"SELECT rowid, {_COLUMNS} FROM tasks WHERE rowid > ? AND {clause} ORDER BY rowid LIMIT ?",
            [after, *args, limit + 1],
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        total = self.db.execute(f"SELECT count(*) FROM tasks WHERE {clause}", args).fetchone()[0]
        return TaskPage(
            items=[_record(row[1:]) for row in rows],
            next_page_token=str(rows[-1][0]) if more else None,
            total=total,
        )

    async def pending(self, limit: int) -> list[TaskRecord]:
        return await self._run(
            self._records,
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'PENDING' ORDER BY priority DESC, created_at, rowid LIMIT ?",
            (limit,),
        )

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        return await self._run(
            self._records,
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'PROCESSING' AND claimed_at <= ?",
            (to_ms(claimed_on_or_before),),
        )

    def _records(self, query: str, args: Sequence) -> list[TaskRecord]:
        return [_record(row) for row in self.db.execute(query, args)]

    @property
    def supports_leases(self) -> bool:
        return True

    async def prune(self, status: TaskStatus, created_before: datetime, *, dry_run: bool = False) -> int:
        return await self._run(self._prune, status, to_ms(created_before), dry_run)

    def _prune(self, status: TaskStatus, created_before_ms: int, dry_run: bool) -> int:
        where, args = "status = ? AND created_at < ?", (status.value, created_before_ms)
        if dry_run:
            return self.db.execute(f"SELECT count(*) FROM tasks WHERE {where}", args).fetchone()[0]
        with self._transaction():
            self.db.execute(f"INSERT OR IGNORE INTO pruned SELECT identifier FROM tasks WHERE {where}", args)
            return self.db.execute(f"DELETE FROM tasks WHERE {where}", args).rowcount

    async def reindex(self) -> int:
        """The tasks table is its own index here; answer how many identifiers dedup knows."""
        return await self._run(self._count_identifiers)

    def _count_identifiers(self) -> int:
        (tasks,) = self.db.execute("SELECT count(*) FROM tasks").fetchone()
        (pruned,) = self.db.execute("SELECT count(*) FROM pruned").fetchone()
        return tasks + pruned


_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]
_LOW = len(_PAIRS) ** 2  # the last four digits


def _digits(value: int, pairs: int) -> str:
    text = []
    for _ in range(pairs):
        value, pair = divmod(value, len(_PAIRS))
        text.append(_PAIRS[pair])
    return "".join(reversed(text))


def _where(status: TaskStatus | None, where: TaskFilter) -> tuple[str, list]:
    """The SQL condition for a status and a filter, with the semantics of `TaskFilter.matches`."""
    terms: list[tuple[str, object]] = [
        ("status = ?", status.value if status is not None else None),
        ("identifier = ?", where.identifier),
        ("priority = ?", where.priority),
        ("priority >= ?", where.priority_min),
        ("priority <= ?", where.priority_max),
        ("created_at >= ?", to_ms(where.created_after) if where.created_after else None),
        ("created_at < ?", to_ms(where.created_before) if where.created_before else None),
    ]
    given = [(sql, value) for sql, value in terms if value is not None]
    return " AND ".join(["1", *(sql for sql, _ in given)]), [value for _, value in given]


def _decode_token(page_token: str | None) -> int:
    if not page_token:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", page_token):  # str.isdigit() also takes "²", which int() refuses
        raise InvalidInput("page_token is not one this service gave out")
    return int(page_token)


def _record(row: Sequence) -> TaskRecord:
    record_id, identifier, status, payload, priority, created_at, claimed_at, attempts, result, error, finished = row
    return TaskRecord(
        record_id=record_id,
        identifier=identifier,
        status=TaskStatus(status),
        payload=json.loads(payload),
        priority=priority,
        created_at=from_ms(created_at),
        claimed_at=from_ms(claimed_at),
        attempts=attempts,
        result=json.loads(result) if result is not None else None,
        error=error,
        finished_at=from_ms(finished),
    )
