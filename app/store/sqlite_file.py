"""One SQLite file under DATA_DIR (the store, the index, the claim journal), and its failures as 503s."""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import StoreUnavailable

LOCAL_RETRY_AFTER = 5  # seconds: a locked file frees up quickly; a full disk needs an operator either way


@contextmanager
def local_storage(what: str) -> Iterator[None]:
    """A local file failing (disk full, I/O error, read-only, locked, corrupt) is a 503 the client may retry."""
    try:
        yield
    except sqlite3.ProgrammingError:  # a bug (a closed connection, a bad statement), not the disk
        raise
    except (sqlite3.DatabaseError, OSError) as exc:
        raise StoreUnavailable(f"{what} failed: {exc}", retry_after=LOCAL_RETRY_AFTER) from exc


class SqliteFile:
    """One SQLite file under DATA_DIR in WAL mode, shared by the store, the index and the claim journal."""

    def __init__(self, path: Path, schema: str):
        self.path = path
        self._schema = schema
        self._db: sqlite3.Connection | None = None
        self._writer = threading.Lock()  # one transaction at a time on the connection, whichever thread runs it

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(self._schema)
        self._db = db

    def close(self) -> None:
        with self._writer:  # not under a transaction still running on another thread: that crashes the process
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path.name} is not open")
        return self._db

    @contextmanager
    def transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, which serializes writers across processes; fsynced only when durable."""
        with self._writer:
            db = self.db
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite has already rolled back after some errors (a full disk among them)
                    db.execute("ROLLBACK")
                raise
