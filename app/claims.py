"""The claim journal: claims in flight, on disk, so what a crash or outage leaves before the publish is undone."""

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.locks import FileLock
from app.paths import claim_owner_lock
from app.store.sqlite_file import SqliteFile, local_storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    record_id  TEXT PRIMARY KEY,
    attempts   INTEGER NOT NULL,   -- the count before the claim, restored when it is undone
    published  INTEGER NOT NULL DEFAULT 0,
    owner      TEXT NOT NULL       -- the claiming journal: while it holds its lock it may still be publishing
);
"""


@dataclass(frozen=True, slots=True)
class Claim:
    record_id: str
    attempts: int
    published: bool
    owner: str


class ClaimJournal(SqliteFile):
    """Claims in flight, written before the claim: what a crash or outage leaves is settled on the next cycle.

    Each open journal holds an flock on its own file under `claims-owners/`; the kernel drops it when the
    process dies, zombie or not, so a claim whose owner's lock is free belongs to nobody alive. A pid would
    not do: a zombie's or a reused pid still answers kill(pid, 0).
    """

    def __init__(self, path: Path):
        super().__init__(path, _SCHEMA)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # never all digits: the column of an old file is INTEGER
        self._alive = FileLock(claim_owner_lock(path, self.owner))

    def open(self) -> None:
        with local_storage("the claim journal"):
            super().open()
            if not self._alive.acquire():
                raise RuntimeError(f"{self._alive.path} is held already")

    def close(self) -> None:
        super().close()
        if self._alive.held:
            self._alive.path.unlink(missing_ok=True)  # a missing lock file reads as a dead owner: what we are now
            self._alive.release()

    def begin(self, claims: Iterable[tuple[str, int]]) -> None:
        """Durable before the claim is written: it is what lets a crash be undone."""
        rows = [(r, a, self.owner) for r, a in claims]
        self._write("INSERT OR REPLACE INTO claims VALUES (?, ?, 0, ?)", rows, durable=True)

    def mark_published(self, record_ids: Iterable[str]) -> None:
        """Not fsynced: if lost, the claim is put back and its task sent again, which at-least-once allows."""
        self._write("UPDATE claims SET published = 1 WHERE record_id = ?", [(r,) for r in record_ids])

    def settle(self, record_ids: Iterable[str]) -> None:
        self._write("DELETE FROM claims WHERE record_id = ?", [(r,) for r in record_ids])

    def _write(self, sql: str, rows: list[tuple], durable: bool = False) -> None:
        """One transaction: the connection autocommits, so a bare executemany would commit (and fsync) per row."""
        if rows:
            with local_storage("the claim journal"), self.transaction(durable) as db:
                db.executemany(sql, rows)

    def unsettled(self) -> list[Claim]:
        with local_storage("the claim journal"):
            rows = self.db.execute("SELECT record_id, attempts, published, owner FROM claims").fetchall()
        return [Claim(rid, attempts, bool(published), str(owner)) for rid, attempts, published, owner in rows]

    def settleable(self) -> list[Claim]:
        """This journal's own claims (the caller runs no dispatch of its own meanwhile) and those of dead owners."""
        claims = self.unsettled()
        alive = {owner: self._holds_lock(owner) for owner in {c.owner for c in claims} - {self.owner}}
        return [c for c in claims if c.owner == self.owner or not alive[c.owner]]

    def _holds_lock(self, owner: str) -> bool:
        lock = FileLock(claim_owner_lock(self.path, owner))
        if not lock.path.exists():  # gone with a clean close, or a claim from before owners had locks
            return False
        if not lock.acquire():
            return True
        lock.path.unlink(missing_ok=True)  # its owner is dead and will never come back under that name
        lock.release()
        return False
