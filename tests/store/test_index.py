"""The identifier index on its own: reservations, marks, the schema upgrade, the background checkpoint."""

import sqlite3
import threading
from pathlib import Path

import pytest

from app.store.index import Entry, IdentifierIndex, State

A, B, C, D = (f"{n:064x}" for n in (0xA, 0xB, 0xC, 0xD))


@pytest.fixture
def index(tmp_path: Path):
    index = IdentifierIndex(tmp_path / "index.db")
    index.open()
    yield index
    index.close()


def reopen(index: IdentifierIndex) -> IdentifierIndex:
    index.close()
    index.open()
    return index


def test_reservations_survive_a_reopen_and_read_as_writing(index):
    index.mark_writing([A, B])
    reopen(index)
    assert sorted(index.writing()) == [A, B]
    assert index.lookup([A, B, C]) == {A: Entry(None, State.WRITING), B: Entry(None, State.WRITING)}
    assert index.count() == 2


def test_a_stored_mark_replaces_the_reservation(index):
    index.mark_writing([A, B])
    index.mark_stored([(A, "recA")])
    reopen(index)
    assert index.writing() == [B]
    assert index.lookup([A, B]) == {A: Entry("recA", State.STORED), B: Entry(None, State.WRITING)}
    assert index.count() == 2


def test_forgetting_a_reservation_makes_the_identifier_unknown_again(index):
    index.mark_writing([A, B])
    index.forget_writing([A])
    assert index.writing() == [B]
    assert A not in index.lookup([A])


def test_a_new_reservation_of_a_stored_identifier_reads_as_writing_until_settled(index):
    index.mark_stored([(A, "recA")])
    index.mark_writing([A])
    assert index.lookup([A]) == {A: Entry(None, State.WRITING)}
    assert index.count() == 1
    index.mark_stored([(A, "recA2")])
    assert index.lookup([A]) == {A: Entry("recA2", State.STORED)}
    assert index.writing() == []


def test_pruned_identifiers_stay_pruned(index):
    index.mark_stored([(A, "recA")])
    index.mark_writing([B])
    index.mark_pruned([A, B])
    index.mark_stored([(A, "recA2"), (B, "recB")])
    assert index.lookup([A, B]) == {A: Entry(None, State.PRUNED), B: Entry(None, State.PRUNED)}
    assert index.writing() == []


def test_lookups_span_several_query_chunks(index):
    identifiers = [f"{n:064x}" for n in range(1_234)]
    index.mark_stored([(i, f"rec{n}") for n, i in enumerate(identifiers[::2])])
    index.mark_writing(identifiers[1::4])
    found = index.lookup(identifiers)
    assert len(found) == 617 + 309
    assert found[identifiers[2]] == Entry("rec1", State.STORED)
    assert found[identifiers[1]].state is State.WRITING
    assert identifiers[3] not in found


def test_a_file_of_the_previous_schema_is_upgraded_on_open(tmp_path):
    path = tmp_path / "index.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(
        """
        CREATE TABLE identifiers (identifier BLOB PRIMARY KEY, record_id TEXT, state INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('complete', '1');
        """
    )
    rows = [(bytes.fromhex(A), None, 0), (bytes.fromhex(B), "recB", 1), (bytes.fromhex(C), None, 2)]
    old.executemany("INSERT INTO identifiers VALUES (?, ?, ?)", rows)
    old.close()

    index = IdentifierIndex(path)
    index.open()
    try:
        assert index.complete
        assert index.writing() == [A]
        expected = {A: Entry(None, State.WRITING), B: Entry("recB", State.STORED), C: Entry(None, State.PRUNED)}
        assert index.lookup([A, B, C, D]) == expected
        assert index.count() == 3
        index.mark_stored([(A, "recA")])
        reopen(index)  # the upgrade runs once: a second open finds nothing to move
        assert index.writing() == []
        assert index.lookup([A]) == {A: Entry("recA", State.STORED)}
    finally:
        index.close()


def test_close_stops_the_background_checkpoint_and_leaves_every_mark_in_the_file(tmp_path):
    path = tmp_path / "index.db"
    index = IdentifierIndex(path)
    index.open()
    index.mark_stored([(f"{n:064x}", f"rec{n}") for n in range(5_000)])
    index.mark_writing([A])
    index.close()
    assert not [t for t in threading.enumerate() if path.name in t.name]
    assert not Path(f"{path}-wal").exists()  # the last connection folded the WAL into the file
    plain = sqlite3.connect(path)
    assert plain.execute("SELECT count(*) FROM identifiers").fetchone() == (5_000,)
    assert plain.execute("SELECT count(*) FROM writing").fetchone() == (1,)
    plain.close()


def test_a_lookup_during_a_stored_mark_sees_every_identifier_as_writing_or_stored(index):
    lookups = 0
    for round_ in range(30):
        ids = [f"{n:064x}" for n in range(round_ * 1_000, round_ * 1_000 + 500)]
        index.mark_writing(ids)
        marking = threading.Thread(target=index.mark_stored, args=([(i, "rec") for i in ids],))
        marking.start()
        while marking.is_alive():  # the mark moves each identifier from `writing` to `identifiers`
            assert len(index.lookup(ids)) == len(ids)
            lookups += 1
        marking.join()
    assert lookups > 30  # the lookups did overlap the marks


def test_a_full_disk_is_a_store_unavailable_and_leaves_the_index_usable(index):
    from app.errors import StoreUnavailable

    (pages,) = index.db.execute("PRAGMA page_count").fetchone()
    index.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    many = [f"{n:064x}" for n in range(1, 2_000)]
    with pytest.raises(StoreUnavailable, match="identifier index failed: database or disk is full"):
        index.mark_writing(many)
    assert not index.db.in_transaction
    index.mark_writing([A])
    assert index.lookup([A, many[0]]) == {A: Entry(None, State.WRITING)}
