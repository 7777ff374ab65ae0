import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from app.errors import InvalidInput
from app.models import NewTask, StatusChange, Stored, TaskPage, TaskRecord, TaskStatus
from app.store.records import SqliteFile, chunked, from_ms, new_record_id, now_ms, to_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    record_id   TEXT PRIMARY KEY,
    identifier  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    priority    REAL,
    created_at  INTEGER NOT NULL,
    claimed_at  INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, priority DESC, created_at);
-- identifiers of pruned rows: still duplicates forever
CREATE TABLE IF NOT EXISTS pruned (identifier TEXT PRIMARY KEY);
"""
_COLUMNS = "record_id, identifier, status, payload, priority, created_at, claimed_at, attempts"
_CHUNK = 500  # well under SQLite's bound-parameter limit


class SqliteTaskStore:
    """The embedded default: one SQLite file under DATA_DIR, no account, no server."""

    def __init__(self, path: Path):
        self._file = SqliteFile(path, _SCHEMA)

    async def open(self) -> None:
        self._file.open()
        self.db.execute("PRAGMA synchronous=FULL")  # an answered ingest survives a power cut

    async def close(self) -> None:
        self._file.close()

    async def check(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    @property
    def db(self) -> sqlite3.Connection:
        return self._file.db

    def _transaction(self):
        return _Immediate(self.db)

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

    async def add(self, tasks: Sequence[NewTask]) -> list[Stored]:
        created_at = now_ms()
        with self._transaction():
            seen = self._seen([task.identifier for task in tasks])
            results, rows = [], []
            for task in tasks:
                if task.identifier in seen:
                    results.append(Stored(task.identifier, seen[task.identifier], created=False))
                    continue
                record_id = new_record_id()
                seen[task.identifier] = record_id
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
                results.append(Stored(task.identifier, record_id, created=True))
            self.db.executemany(f"INSERT INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
        return results

    async def lookup(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        return self._seen(identifiers)

    async def get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return self._get(record_ids)

    def _get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        found = {}
        for chunk in chunked(list(record_ids), _CHUNK):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE record_id IN ({marks})", chunk):
                record = _record(row)
                found[record.record_id] = record
        return found

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        with self._transaction():
            existing = self._get([change.record_id for change in changes])
            rows = [
                (
                    change.status.value,
                    to_ms(change.claimed_at) if change.claimed_at else None,
                    change.attempts,
                    change.record_id,
                )
                for change in changes
                if change.record_id in existing
            ]
            self.db.executemany(
                "UPDATE tasks SET status = ?, claimed_at = COALESCE(?, claimed_at),"
                " attempts = COALESCE(?, attempts) WHERE record_id = ?",
                rows,
            )
        return [change.record_id for change in changes if change.record_id not in existing]

    async def page(self, status: TaskStatus | None, limit: int, page_token: str | None) -> TaskPage:
        after = _decode_token(page_token)
        where, args = "rowid > ?", [after]
        if status is not None:
            where += " AND status = ?"
            args.append(status.value)
        rows = self.db.execute(
            f"SELECT rowid, {_COLUMNS} FROM tasks WHERE {where} ORDER BY rowid LIMIT ?", [*args, limit + 1]
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        total_where = "status = ?" if status is not None else "1"
        total = self.db.execute(
            f"SELECT count(*) FROM tasks WHERE {total_where}", [status.value] if status else []
        ).fetchone()[0]
        return TaskPage(
            items=[_record(row[1:]) for row in rows],
            next_page_token=str(rows[-1][0]) if more else None,
            total=total,
        )

    async def pending(self, limit: int) -> list[TaskRecord]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'PENDING' ORDER BY priority DESC, created_at, rowid LIMIT ?",
            (limit,),
        )
        return [_record(row) for row in rows]

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE status = 'PROCESSING' AND claimed_at <= ?",
            (to_ms(claimed_on_or_before),),
        )
        return [_record(row) for row in rows]

    @property
    def supports_leases(self) -> bool:
        return True

    async def prune(self, status: TaskStatus, created_before: datetime) -> int:
        where, args = "status = ? AND created_at < ?", (status.value, to_ms(created_before))
        with self._transaction():
            self.db.execute(f"INSERT OR IGNORE INTO pruned SELECT identifier FROM tasks WHERE {where}", args)
            return self.db.execute(f"DELETE FROM tasks WHERE {where}", args).rowcount

    async def reindex(self) -> int:
        """The tasks table is its own index here; answer how many identifiers dedup knows."""
        (tasks,) = self.db.execute("SELECT count(*) FROM tasks").fetchone()
        (pruned,) = self.db.execute("SELECT count(*) FROM pruned").fetchone()
        return tasks + pruned


class _Immediate:
    """BEGIN IMMEDIATE … COMMIT: serializes writers across processes sharing the file."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _decode_token(page_token: str | None) -> int:
    if not page_token:
        return 0
    if not page_token.isdigit() or len(page_token) > 18:
        raise InvalidInput("page_token is not one this service gave out")
    return int(page_token)


def _record(row: Sequence) -> TaskRecord:
    record_id, identifier, status, payload, priority, created_at, claimed_at, attempts = row
    return TaskRecord(
        record_id=record_id,
        identifier=identifier,
        status=TaskStatus(status),
        payload=json.loads(payload),
        priority=priority,
        created_at=from_ms(created_at),
        claimed_at=from_ms(claimed_at),
        attempts=attempts,
    )
