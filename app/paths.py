"""Every file and folder the service keeps under DATA_DIR, named once, and the order its locks are taken in.

Under DATA_DIR:

    tasks.db                    the embedded SQLite store (STORE=sqlite), with its -wal and -shm
    index-<table id>.db         the identifier index of one Bitable table (STORE=bitable)
    outbox-<table id>.db        workers' reports accepted for that table and not yet confirmed written there
    outbox-<table id>.lock      one flush of that outbox at a time, across every process on this DATA_DIR
    claims.db                   the claim journal: claims in flight, settled by the next cycle
    claims-owners/<owner>.lock  one flock per open claim journal: a free one means its owner is dead
    replenish.lock              one replenish cycle at a time, across every process on this DATA_DIR
    scheduler.lock              one process runs the timer
    replenish-history.json      the recent cycles' reports, newest first, for /api/stats of any process
    broker/{queue,processed,control}/   the embedded broker (CELERY_BROKER_URL=filesystem://)
    .ready-*, .doctor-*         a probe's file, made, synced and removed at once (/readyz, `doctor`)
    .replenish-history.json-*   the next history, written whole, then renamed over the last one
    service.log, worker-<n>.log the demo's processes' output (the demo's DATA_DIR is a new temporary folder)

The locks, outermost first; a task holding one may wait only for those below it, never for one above:

 1. scheduler.lock, claims-owners/<own>.lock: taken once at start, held for the process's (journal's) life,
    never waited for (a non-blocking flock: a second process does without the timer).
 2. replenish.lock (flock, non-blocking: a second cycle is a 409 Conflict), held for one cycle
    (`ReplenishCycle.run`); the bot's notice is sent after it is released.
 3. `Dispatcher.claiming` (asyncio.Lock, this process): from reading the rows to claim until they are
    dispatched; taken by the cycle (settling claims, then topping up, one after the other), by lease recovery
    on its own, by the priority push (around its `store.add`, whose write it waits for), and by a priority
    change (around its `store.set_priority`, whose turn it waits for).
 4. The claim journal's transaction (claims.db: `SqliteFile`'s thread lock, then SQLite's BEGIN IMMEDIATE),
    before the claim is written and again after; it probes other owners' claims-owners/*.lock, non-blocking.
 5. `BatchWriter.turn()` / its write lock (asyncio.Lock, one Bitable write per table at a time): a store
    update or prune takes a turn per batch; the writer's send loop holds it for each `batch_create`; every
    flush of the outbox (the flusher's, and the one a read or an update makes first) runs inside a turn.
 6. outbox-<table>.lock (flock, polled without blocking), taken inside that turn for one flush: from reading
    the oldest entries until their write is confirmed and they are deleted.
 7. The index's, the outbox's or the store's transaction (index-<table>.db, outbox-<table>.db, tasks.db: the
    thread lock, then BEGIN IMMEDIATE): a Bitable update marks the index and the outbox after its turn is
    released, and the writer marks (`mark_writing`, `mark_stored`) outside the write lock; a flush deletes
    what it wrote under its turn and flush lock; a report is appended under this transaction alone, as the
    SQLite store's writes are, concurrent reports (or `add`s there) sharing one (group commit).
 8. Leaves, holding nothing else: the bot's send lock (`FeishuBot`, its rate budget) and the token fetch
    every Feishu call shares (a future, not a lock).
"""

from dataclasses import dataclass
from pathlib import Path

READY_PROBE_PREFIX = ".ready-"  # /readyz writes and syncs one such file to prove DATA_DIR takes writes
DOCTOR_PROBE_PREFIX = ".doctor-"


def claim_owners(journal: Path) -> Path:
    """The folder of the journal's owner locks, beside it (claims-owners/ beside claims.db)."""
    return journal.with_name(f"{journal.stem}-owners")


def claim_owner_lock(journal: Path, owner: str) -> Path:
    return claim_owners(journal) / f"{owner}.lock"


@dataclass(frozen=True, slots=True)
class DataDir:
    """DATA_DIR's files by name: `DataDir(settings.data_dir).claims_db`."""

    root: Path

    @property
    def tasks_db(self) -> Path:
        return self.root / "tasks.db"

    def index_db(self, table_id: str) -> Path:
        return self.root / f"index-{table_id}.db"

    def outbox_db(self, table_id: str) -> Path:
        return self.root / f"outbox-{table_id}.db"

    def outbox_lock(self, table_id: str) -> Path:
        return self.root / f"outbox-{table_id}.lock"

    @property
    def claims_db(self) -> Path:
        return self.root / "claims.db"

    @property
    def claims_owners(self) -> Path:
        return claim_owners(self.claims_db)

    @property
    def replenish_lock(self) -> Path:
        return self.root / "replenish.lock"

    @property
    def scheduler_lock(self) -> Path:
        return self.root / "scheduler.lock"

    @property
    def replenish_history(self) -> Path:
        return self.root / "replenish-history.json"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def broker_queue(self) -> Path:
        return self.broker / "queue"

    @property
    def broker_processed(self) -> Path:
        return self.broker / "processed"

    @property
    def broker_control(self) -> Path:
        return self.broker / "control"

    @property
    def service_log(self) -> Path:
        return self.root / "service.log"

    def worker_log(self, n: int) -> Path:
        return self.root / f"worker-{n}.log"
