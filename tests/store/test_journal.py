import os

import pytest

from app.store.journal import Claim, ClaimJournal


@pytest.fixture
def journal(tmp_path):
    journal = ClaimJournal(tmp_path / "claims.db")
    journal.open()
    yield journal
    journal.close()


def test_claims_are_begun_published_and_settled(journal):
    journal.begin([("rec1", 0), ("rec2", 2)])
    journal.mark_published(["rec2"])
    assert sorted(journal.unsettled(), key=lambda c: c.record_id) == [
        Claim("rec1", 0, False, os.getpid()),
        Claim("rec2", 2, True, os.getpid()),
    ]
    journal.settle(["rec1", "rec2"])
    assert journal.unsettled() == []


def test_a_begin_that_fails_part_way_leaves_no_claim(journal):
    """One transaction per call: a batch is journaled whole or not at all, never row by row."""
    with pytest.raises(Exception, match="NOT NULL"):
        journal.begin([("rec1", 0), ("rec2", 0), ("rec3", None)])  # attempts is NOT NULL
    assert journal.unsettled() == []
    assert not journal.db.in_transaction
