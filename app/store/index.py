from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from app.store.records import SqliteFile, chunked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identifiers (
    identifier BLOB PRIMARY KEY,   -- the 32 bytes of the sha256, half the size of its hex
    record_id  TEXT,
    state      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_CHUNK = 500


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

    @property
    def complete(self) -> bool:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
        return row is not None and row[0] == "1"

    def mark_complete(self, complete: bool) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('complete', ?)", ("1" if complete else "0",))

    def lookup(self, identifiers: Sequence[str]) -> dict[str, Entry]:
        found = {}
        for chunk in chunked([bytes.fromhex(i) for i in identifiers], _CHUNK):
            marks = ",".join("?" * len(chunk))
            for key, record_id, state in self.db.execute(
                f"SELECT identifier, record_id, state FROM identifiers WHERE identifier IN ({marks})", chunk
            ):
                found[key.hex()] = Entry(record_id, State(state))
        return found

    def mark_writing(self, identifiers: Iterable[str]) -> None:
        """Durable before the write is sent: this mark is what lets a crash be reconciled."""
        self._write("INSERT OR REPLACE INTO identifiers VALUES (?, NULL, 0)", _keys(identifiers), durable=True)

    def mark_stored(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record identifier → record id; an identifier already pruned stays pruned."""
        self._write(
            "INSERT INTO identifiers VALUES (?, ?, 1) ON CONFLICT (identifier) DO UPDATE"
            " SET record_id = excluded.record_id, state = 1 WHERE state != 2",
            [(bytes.fromhex(i), r) for i, r in pairs],
        )

    def mark_pruned(self, identifiers: Iterable[str]) -> None:
        self._write("INSERT OR REPLACE INTO identifiers VALUES (?, NULL, 2)", _keys(identifiers), durable=True)

    def forget_writing(self, identifiers: Iterable[str]) -> None:
        """Drop reservations whose write is known not to have happened."""
        self._write("DELETE FROM identifiers WHERE identifier = ? AND state = 0", _keys(identifiers))

    def writing(self) -> list[str]:
        return [key.hex() for (key,) in self.db.execute("SELECT identifier FROM identifiers WHERE state = 0")]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM identifiers").fetchone()[0]

    def _write(self, sql: str, rows: list[tuple], durable: bool = False) -> None:
        """Commit; fsync only when asked: a lost STORED mark reads as WRITING again and is reconciled."""
        if not rows:
            return
        db = self.db
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _keys(identifiers: Iterable[str]) -> list[tuple[bytes]]:
    return [(bytes.fromhex(identifier),) for identifier in identifiers]
