"""What the SQLite store promises beyond the shared contract: group commit, durable answers, rising record ids,
an older file brought up to date, and `if_still`."""

import asyncio
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from app.errors import StoreUnavailable
from app.models import StatusChange, TaskStatus
from app.store.sqlite import SqliteTaskStore
from tests.support.tasks import add_all, new_task


def committed_ids(store) -> set[str]:
    """The record ids another connection sees: only what a transaction has committed."""
    with sqlite3.connect(store._file.path) as other:
        return {row[0] for row in other.execute("SELECT record_id FROM tasks")}


async def test_concurrent_adds_are_answered_only_once_their_rows_are_committed(sqlite_store):
    batches = [[new_task(n) for n in range(start, start + 20)] for start in range(0, 200, 20)]
    results = await asyncio.gather(*(add_all(sqlite_store, batch) for batch in batches))
    ids = {entry.record_id for stored in results for entry in stored}
    assert len(ids) == 200
    assert ids <= committed_ids(sqlite_store)


async def test_a_duplicate_across_concurrent_adds_is_created_once_with_one_record_id(sqlite_store):
    first, second = await asyncio.gather(
        add_all(sqlite_store, [new_task(1)]), add_all(sqlite_store, [new_task(1), new_task(2)])
    )
    assert [s.created for s in first + second] == [True, False, True]
    assert first[0].record_id == second[0].record_id


async def test_record_ids_keep_bitables_shape_and_rise_from_one_add_to_the_next(sqlite_store):
    ids = []
    for start in range(0, 50, 10):
        ids += [
            entry.record_id for entry in await add_all(sqlite_store, [new_task(n) for n in range(start, start + 10)])
        ]
    assert all(re.fullmatch(r"rec[A-Za-z0-9]{14}", record_id) for record_id in ids)
    assert ids == sorted(ids) and len(set(ids)) == 50


async def test_a_locked_file_answers_every_waiting_add_unavailable_and_keeps_the_loop_running(sqlite_store):
    await sqlite_store._run(lambda: sqlite_store.db.execute("PRAGMA busy_timeout=2000"))
    holder = sqlite3.connect(sqlite_store._file.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing the same file
    try:
        adds = [asyncio.ensure_future(sqlite_store.add([new_task(n)])) for n in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)  # the loop turns while the adds wait for the lock on the store's thread
        assert not any(add.done() for add in adds)
        for add in adds:
            added = await add
            assert isinstance(added.error, StoreUnavailable) and added.stored == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [s.created for s in await add_all(sqlite_store, [new_task(n) for n in range(3)])] == [True] * 3
    assert len(committed_ids(sqlite_store)) == 3


# the tasks table as the first release made it, before results, errors and finish times
_FIRST_SCHEMA = """
CREATE TABLE tasks (
    record_id   TEXT PRIMARY KEY,
    identifier  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    priority    REAL,
    created_at  INTEGER NOT NULL,
    claimed_at  INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_status ON tasks (status, priority DESC, created_at);
CREATE TABLE pruned (identifier TEXT PRIMARY KEY);
"""


def first_release_file(path: Path) -> str:
    """A tasks.db written by the first release, holding one PROCESSING task; answers its record id."""
    path.parent.mkdir(parents=True)
    task = new_task(1)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as the first release left it
        db.executescript(_FIRST_SCHEMA)
        db.execute(
            "INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?)",
            ("recOLD0000000001", task.identifier, "PROCESSING", task.canonical, 3.0, 1_700_000_000_000, None, 1),
        )
    db.close()
    return "recOLD0000000001"


def column_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        names = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
    db.close()
    return names


async def test_a_tasks_db_from_the_first_release_gains_the_result_columns_and_keeps_its_tasks(tmp_path):
    path = tmp_path / "data" / "tasks.db"
    record_id = first_release_file(path)
    store = SqliteTaskStore(path)
    await store.open()
    try:
        old = (await store.get([record_id]))[record_id]
        assert (old.status, old.priority, old.attempts, old.payload) == (TaskStatus.PROCESSING, 3.0, 1, {"n": 1})
        assert (old.result, old.error, old.finished_at) == (None, None, None)
        finished = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
        change = StatusChange(record_id, TaskStatus.SUCCESS, result={"rows": 12}, finished_at=finished)
        assert await store.report([change]) == []
        assert (await add_all(store, [new_task(1)]))[0].record_id == record_id  # dedup still knows it
    finally:
        await store.close()
    assert column_names(path)[-3:] == ["result", "error", "finished_at"]
    again = SqliteTaskStore(path)  # a second open finds nothing to add
    await again.open()
    try:
        record = (await again.get([record_id]))[record_id]
        assert (record.status, record.result, record.finished_at) == (TaskStatus.SUCCESS, {"rows": 12}, finished)
    finally:
        await again.close()


async def test_two_stores_opening_one_old_file_at_once_add_each_column_once(tmp_path):
    path = tmp_path / "data" / "tasks.db"
    first_release_file(path)
    stores = [SqliteTaskStore(path), SqliteTaskStore(path)]  # as two processes on one DATA_DIR would
    try:
        await asyncio.gather(*(store.open() for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    assert column_names(path).count("result") == 1 and len(column_names(path)) == 11


async def test_a_change_with_if_still_applies_only_to_a_task_still_in_that_status(sqlite_store):
    stored = await add_all(sqlite_store, [new_task(n) for n in range(3)])
    a, b, c = (s.record_id for s in stored)
    claimed = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    await sqlite_store.update([StatusChange(r, TaskStatus.PROCESSING, claimed_at=claimed, attempts=1) for r in (a, b)])
    await sqlite_store.report([StatusChange(b, TaskStatus.SUCCESS, result={"done": True})])  # b's worker was first
    put_back = [StatusChange(r, TaskStatus.PENDING, if_still=TaskStatus.PROCESSING) for r in (a, b, c)]
    assert await sqlite_store.update([*put_back, StatusChange("recGONE00000000", TaskStatus.PENDING)]) == [
        b,
        c,
        "recGONE00000000",
    ]
    records = await sqlite_store.get([a, b, c])
    assert records[a].status is TaskStatus.PENDING and records[a].attempts == 1
    assert (records[b].status, records[b].result) == (TaskStatus.SUCCESS, {"done": True})
    assert records[c].status is TaskStatus.PENDING
