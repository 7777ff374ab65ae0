"""What the SQLite store promises beyond the shared contract: group commit, durable answers, rising record ids."""

import asyncio
import re
import sqlite3

from app.errors import StoreUnavailable
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
