"""The outbox: workers' reports for one Bitable table, kept in SQLite until the table confirms their write.

A report is appended durably (concurrent ones share one commit and its fsync) and answered at once; the
flusher (app/store/flusher.py) takes the oldest entries, writes them, and deletes them once Feishu confirms,
so a crash before that writes them again (a status write is idempotent). Entries leave oldest first, so the
sequence numbers present are always one unbroken run.

`known` holds the record ids this store knows exist without a call: claimed by it, or found by a `batch_get`,
until a finishing status is written to them. It stays as small as the number of tasks in workers' hands, so
the identifier index (a million rows, marked by every ingest) carries no second key.
"""

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.models import Backlog, StatusChange, TaskStatus
from app.store.chunks import chunked
from app.store.sqlite_file import SqliteFile, local_storage
from app.store.timestamps import from_ms, to_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- acceptance order, never reused: a flush's `until` stays its own
    record_id   TEXT NOT NULL,
    change      TEXT NOT NULL,        -- status, result, error, finished_at as JSON
    accepted_at REAL NOT NULL         -- unix seconds
);
CREATE INDEX IF NOT EXISTS entries_by_record ON entries (record_id, seq);
-- changes the table refused even as a bare status: kept for an operator, never sent again
CREATE TABLE IF NOT EXISTS refused (
    record_id   TEXT NOT NULL,
    change      TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    refused_at  REAL NOT NULL,
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS known (record_id TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_CHUNK = 400  # record ids per statement, twice over in `known`: under SQLite's variable limit
FINISHED = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted change, numbered in the order of acceptance."""

    seq: int
    change: StatusChange
    accepted_at: float


@dataclass(frozen=True, slots=True)
class Refused:
    """A change the table refused even as a bare status, and why."""

    change: StatusChange
    reason: str


class Outbox:
    """Accepted reports in the order they came, durable until the table has them; and the record ids known to exist."""

    def __init__(self, path: Path):
        self._file = SqliteFile(path, _SCHEMA)
        self._reader: sqlite3.Connection | None = None  # reads on the event loop never wait for a commit's fsync
        self._waiting: list[tuple[list[tuple[str, str, float]], list[str], asyncio.Future[None]]] = []
        self._committer: asyncio.Task | None = None

    def open(self) -> None:
        self._file.open()
        self._reader = sqlite3.connect(self._file.path, isolation_level=None, check_same_thread=False)

    async def close(self) -> None:
        if self._committer is not None:  # the last group still commits: its reports were accepted
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._file.close()

    # ---- accepting --------------------------------------------------------------------------------------------

    async def append(self, changes: Sequence[StatusChange], found: Iterable[str] = ()) -> None:
        """Durable on return: the changes, after every change appended before; and record ids a lookup found.

        Concurrent calls share one transaction (group commit): one fsync answers all of them.
        """
        now = time.time()
        rows = [(change.record_id, _encode(change), now) for change in changes]
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, list(found), waiter))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        await waiter

    async def _commit_waiting(self) -> None:
        """Commit what waits, in one transaction; calls that arrive meanwhile go in the next one."""
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await asyncio.to_thread(self._commit, group)
                except Exception as exc:
                    for *_, waiter in group:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for *_, waiter in group:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._committer = None

    @local_storage("the outbox")  # a full disk refuses the report (503), it does not lose it
    def _commit(self, group: list[tuple[list[tuple[str, str, float]], list[str], asyncio.Future[None]]]) -> None:
        with self._file.transaction(durable=True) as db:
            for rows, found, _ in group:
                db.executemany("INSERT INTO entries (record_id, change, accepted_at) VALUES (?, ?, ?)", rows)
                db.executemany("INSERT OR IGNORE INTO known VALUES (?)", [(record_id,) for record_id in found])

    # ---- reading, on the event loop ---------------------------------------------------------------------------

    @local_storage("the outbox")
    def known(self, record_ids: Sequence[str]) -> set[str]:
        """Those known to exist without a call: remembered, or with a change waiting here."""
        found: set[str] = set()
        for chunk in chunked(list(dict.fromkeys(record_ids)), _CHUNK):
            marks = ",".join("?" * len(chunk))
            found.update(
                record_id
                for (record_id,) in self._read(
                    f"SELECT record_id FROM known WHERE record_id IN ({marks})"
                    f" UNION SELECT record_id FROM entries WHERE record_id IN ({marks})",
                    [*chunk, *chunk],
                )
            )
        return found

    @local_storage("the outbox")
    def waiting(self, record_ids: Sequence[str]) -> dict[str, list[StatusChange]]:
        """The changes not yet written, per record, in the order accepted."""
        found: dict[str, list[StatusChange]] = {}
        for chunk in chunked(list(dict.fromkeys(record_ids)), _CHUNK):
            marks = ",".join("?" * len(chunk))
            for record_id, change in self._read(
                f"SELECT record_id, change FROM entries WHERE record_id IN ({marks}) ORDER BY seq", chunk
            ):
                found.setdefault(record_id, []).append(_decode(record_id, change))
        return found

    @local_storage("the outbox")
    def backlog(self) -> Backlog:
        """How many changes wait, how long the oldest has, and how many were refused for good."""
        reader = self._connection()
        reader.execute("BEGIN")  # one snapshot: the oldest must not be written between the two reads
        try:
            first, last, refused = reader.execute(
                "SELECT (SELECT min(seq) FROM entries), (SELECT max(seq) FROM entries), (SELECT count(*) FROM refused)"
            ).fetchone()
            if first is None:
                return Backlog(0, None, refused)
            (accepted_at,) = reader.execute("SELECT accepted_at FROM entries WHERE seq = ?", (first,)).fetchone()
        finally:
            reader.execute("COMMIT")
        return Backlog(last - first + 1, max(0.0, time.time() - accepted_at), refused)

    def depth(self) -> int:
        return self.backlog().depth

    @local_storage("the outbox")
    def newest(self) -> int | None:
        """The sequence number of the last change accepted, if any waits."""
        return self._read("SELECT max(seq) FROM entries", ()).fetchone()[0]

    @local_storage("the outbox")
    def refused(self) -> list[Refused]:
        return [
            Refused(_decode(record_id, change), reason)
            for record_id, change, reason in self._read("SELECT record_id, change, reason FROM refused", ())
        ]

    def _read(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        return self._connection().execute(sql, args)

    def _connection(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError(f"{self._file.path.name} is not open")
        return self._reader

    # ---- the flusher's side, on a thread ----------------------------------------------------------------------

    @local_storage("the outbox")
    def take(self, limit: int, until: int | None = None) -> list[Entry]:
        """The oldest changes (up to sequence number `until`), left in place until `done` is called for them."""
        with self._file.transaction() as db:  # on the writer's connection: this runs on a thread
            rows = db.execute(
                "SELECT seq, record_id, change, accepted_at FROM entries WHERE seq <= ? ORDER BY seq LIMIT ?",
                (until if until is not None else 2**63 - 1, limit),
            ).fetchall()
        return [Entry(seq, _decode(record_id, change), accepted_at) for seq, record_id, change, accepted_at in rows]

    @local_storage("the outbox")
    def done(
        self, entries: Sequence[Entry], refused: Sequence[tuple[Entry, str]] = (), gone: Iterable[str] = ()
    ) -> None:
        """Delete entries the table confirmed or answered for good, keeping the `refused` ones aside with their reason.

        Durable: an entry written again after a power cut could undo a later direct write to its record.
        Record ids whose last change here finishes their task are forgotten, as are those `gone` from the table.
        """
        now = time.time()
        last = {entry.change.record_id: entry.change.status for entry in entries}
        forget = [record_id for record_id, status in last.items() if status in FINISHED] + list(gone)
        with self._file.transaction(durable=True) as db:
            db.executemany(
                "INSERT INTO refused VALUES (?, ?, ?, ?, ?)",
                [(e.change.record_id, _encode(e.change), e.accepted_at, now, reason) for e, reason in refused],
            )
            db.executemany("DELETE FROM entries WHERE seq = ?", [(entry.seq,) for entry in entries])
            db.executemany("DELETE FROM known WHERE record_id = ?", [(record_id,) for record_id in forget])

    @local_storage("the outbox")
    def remember(self, record_ids: Iterable[str], forget: Iterable[str] = ()) -> None:
        """Record ids now known to exist (claimed, found), and those to forget (finished, gone from the table)."""
        with self._file.transaction() as db:  # not durable: one lost costs a batch_get at its next report
            db.executemany("INSERT OR IGNORE INTO known VALUES (?)", [(record_id,) for record_id in record_ids])
            db.executemany("DELETE FROM known WHERE record_id = ?", [(record_id,) for record_id in forget])


def _encode(change: StatusChange) -> str:
    """The parts of a report; a claim's fields never come through the outbox."""
    finished = to_ms(change.finished_at) if change.finished_at is not None else None
    body = {"status": change.status.value, "result": change.result, "error": change.error, "finished_at": finished}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _decode(record_id: str, text: str) -> StatusChange:
    body = json.loads(text)
    return StatusChange(
        record_id,
        TaskStatus(body["status"]),
        result=body["result"],
        error=body["error"],
        finished_at=from_ms(body["finished_at"]),
    )
