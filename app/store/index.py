"""The identifier index: every identifier written to one Bitable table, in SQLite, for dedup without a call."""

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from app.store.chunks import chunked
from app.store.sqlite_file import SqliteFile, local_storage

# `writing` stays small and apart: a durable reservation then dirties a few pages, not one per key scattered
# over a million-row tree (the sha256 keys are random)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS identifiers (
    identifier BLOB PRIMARY KEY,   -- the 32 bytes of the sha256, half the size of its hex
    record_id  TEXT,
    state      INTEGER NOT NULL    -- STORED or PRUNED; WRITING lives in `writing`
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writing (identifier BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_VERSION = 2  # 1 kept WRITING rows in `identifiers`
_CHUNK = 500
_CACHE_KIB = 8_192  # one batch dirties ~1,000 leaves at 1M: the default 2 MB spilled them mid-transaction
_FALLBACK_CHECKPOINT = 10_000  # pages: the writer checkpoints itself only if the background one falls behind

log = logging.getLogger(__name__)


class State(IntEnum):
    WRITING = 0  # sent to the table, answer not yet known: reconcile before trusting
    STORED = 1
    PRUNED = 2  # the row is gone from the table; the identifier stays a duplicate forever


@dataclass(frozen=True, slots=True)
class Entry:
    record_id: str | None
    state: State


class IdentifierIndex(SqliteFile):
    """Every identifier ever written to one table, so dedup costs no Feishu call per task."""

    def __init__(self, path: Path):
        super().__init__(path, _SCHEMA)
        self._checkpointer: _Checkpointer | None = None
        self._reader: sqlite3.Connection | None = None  # lookups never meet a mark's transaction on another thread

    def open(self) -> None:
        super().open()
        db = self.db
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        db.execute(f"PRAGMA wal_autocheckpoint={_FALLBACK_CHECKPOINT}")
        if db.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
            self._upgrade()
        self._checkpointer = _Checkpointer(self.path)
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def _upgrade(self) -> None:
        """Version 1 kept WRITING rows in `identifiers`: move them to `writing` (one scan of the file, once)."""
        with self.transaction(durable=True) as db:
            db.execute("INSERT OR IGNORE INTO writing SELECT identifier FROM identifiers WHERE state = 0")
            db.execute("DELETE FROM identifiers WHERE state = 0")
            db.execute(f"PRAGMA user_version = {_VERSION}")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().close()

    @property
    def complete(self) -> bool:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
        return row is not None and row[0] == "1"

    def mark_complete(self, complete: bool) -> None:
        self._write([("INSERT OR REPLACE INTO meta VALUES ('complete', ?)", [("1" if complete else "0",)])])

    @local_storage("the identifier index")  # a full disk or an I/O error is a 503, like the store's own
    def lookup(self, identifiers: Sequence[str]) -> dict[str, Entry]:
        """What the last committed marks say; a write still in flight is the caller's to know."""
        reader = self._reader
        if reader is None:
            raise RuntimeError(f"{self.path.name} is not open")
        found = {}
        reader.execute("BEGIN")  # one snapshot: a mark committed between the two reads would hide its identifier
        try:
            for chunk in chunked([bytes.fromhex(i) for i in identifiers], _CHUNK):
                marks = ",".join("?" * len(chunk))
                for key, record_id, state in reader.execute(
                    f"SELECT identifier, record_id, state FROM identifiers WHERE identifier IN ({marks})", chunk
                ):
                    found[key.hex()] = Entry(record_id, State(state))
                for (key,) in reader.execute(f"SELECT identifier FROM writing WHERE identifier IN ({marks})", chunk):
                    found[key.hex()] = Entry(None, State.WRITING)  # the latest mark: a write is in flight
        finally:
            reader.execute("COMMIT")
        return found

    def mark_writing(self, identifiers: Iterable[str]) -> None:
        """Durable before the write is sent: this mark is what lets a crash be reconciled."""
        self._write([("INSERT OR IGNORE INTO writing VALUES (?)", _keys(identifiers))], durable=True)

    def mark_stored(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record identifier → record id; an identifier already pruned stays pruned.

        The reservation goes in the same transaction, so a STORED mark lost to a power cut reads as WRITING again.
        """
        rows = [(bytes.fromhex(i), r) for i, r in pairs]
        self._write(
            [
                (
                    "INSERT INTO identifiers VALUES (?, ?, 1) ON CONFLICT (identifier) DO UPDATE"
                    " SET record_id = excluded.record_id, state = 1 WHERE state != 2",
                    rows,
                ),
                ("DELETE FROM writing WHERE identifier = ?", [(key,) for key, _ in rows]),
            ]
        )

    def mark_pruned(self, identifiers: Iterable[str]) -> None:
        keys = _keys(identifiers)
        self._write(
            [
                ("INSERT OR REPLACE INTO identifiers VALUES (?, NULL, 2)", keys),
                ("DELETE FROM writing WHERE identifier = ?", keys),
            ],
            durable=True,
        )

    def forget_writing(self, identifiers: Iterable[str]) -> None:
        """Drop reservations whose write is known not to have happened."""
        self._write([("DELETE FROM writing WHERE identifier = ?", _keys(identifiers))])

    def writing(self) -> list[str]:
        return [key.hex() for (key,) in self.db.execute("SELECT identifier FROM writing")]

    def count(self) -> int:
        return self.db.execute(
            "SELECT (SELECT count(*) FROM identifiers)"
            " + (SELECT count(*) FROM writing WHERE identifier NOT IN (SELECT identifier FROM identifiers))"
        ).fetchone()[0]

    @local_storage("the identifier index")
    def _write(self, statements: list[tuple[str, list[tuple]]], durable: bool = False) -> None:
        """Commit; fsync only when asked: a lost STORED mark reads as WRITING again and is reconciled."""
        if not any(rows for _, rows in statements):
            return
        with self.transaction(durable) as db:
            for sql, rows in statements:
                db.executemany(sql, rows)
        if self._checkpointer is not None:
            self._checkpointer.due()


class _Checkpointer:
    """Copies the WAL back into the file on its own thread and connection, off the writer's path.

    At a million random keys one batch dirties ~1,000 scattered pages; writing them back and syncing the file
    took longer than the batch's own commit.
    """

    def __init__(self, path: Path):
        self._path = path
        self._due = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"checkpoint {path.name}", daemon=True)
        self._thread.start()

    def due(self) -> None:
        self._due.set()

    def close(self) -> None:
        self._closing = True
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closing:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # the writer's fallback checkpoint still bounds the WAL
                    log.exception("background checkpoint of %s failed", self._path.name)
        finally:
            db.close()


def _keys(identifiers: Iterable[str]) -> list[tuple[bytes]]:
    return [(bytes.fromhex(identifier),) for identifier in identifiers]
