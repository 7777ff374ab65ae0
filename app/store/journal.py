import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.store.records import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    record_id  TEXT PRIMARY KEY,
    attempts   INTEGER NOT NULL,   -- the count before the claim, restored when it is undone
    published  INTEGER NOT NULL DEFAULT 0,
    owner      INTEGER NOT NULL    -- pid of the claiming process: a live one may still be publishing
);
"""


@dataclass(frozen=True, slots=True)
class Claim:
    record_id: str
    attempts: int
    published: bool
    owner: int


class ClaimJournal(SqliteFile):
    """Claims in flight, written before the claim: what a crash or outage leaves is settled on the next cycle."""

    def __init__(self, path: Path):
        super().__init__(path, _SCHEMA)

    def begin(self, claims: Iterable[tuple[str, int]]) -> None:
        """Durable before the claim is written: it is what lets a crash be undone."""
        pid = os.getpid()
        self._write("INSERT OR REPLACE INTO claims VALUES (?, ?, 0, ?)", [(r, a, pid) for r, a in claims], durable=True)

    def mark_published(self, record_ids: Iterable[str]) -> None:
        """Not fsynced: if lost, the claim is put back and its task sent again, which at-least-once allows."""
        self._write("UPDATE claims SET published = 1 WHERE record_id = ?", [(r,) for r in record_ids])

    def settle(self, record_ids: Iterable[str]) -> None:
        self._write("DELETE FROM claims WHERE record_id = ?", [(r,) for r in record_ids])

    def _write(self, sql: str, rows: list[tuple], durable: bool = False) -> None:
        """One transaction: the connection autocommits, so a bare executemany would commit (and fsync) per row."""
        if rows:
            with self.transaction(durable) as db:
                db.executemany(sql, rows)

    def unsettled(self) -> list[Claim]:
        rows = self.db.execute("SELECT record_id, attempts, published, owner FROM claims")
        return [Claim(record_id, attempts, bool(published), owner) for record_id, attempts, published, owner in rows]
