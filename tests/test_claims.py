"""The claim journal: claims begun, published and settled; a dead owner's claims settleable, a live one's not."""

import os

import pytest

from app.claims import Claim, ClaimJournal
from tests.support import processes


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
        Claim("rec1", 0, False, journal.owner),
        Claim("rec2", 2, True, journal.owner),
    ]
    journal.settle(["rec1", "rec2"])
    assert journal.unsettled() == []


def test_a_begin_that_fails_part_way_leaves_no_claim(journal):
    """One transaction per call: a batch is journaled whole or not at all, never row by row."""
    with pytest.raises(Exception, match="NOT NULL"):
        journal.begin([("rec1", 0), ("rec2", 0), ("rec3", None)])  # attempts is NOT NULL
    assert journal.unsettled() == []
    assert not journal.db.in_transaction


def test_a_live_owners_claims_are_left_alone(journal):
    with processes.claiming_child(journal.path, "recLIVE"):
        assert [c.record_id for c in journal.unsettled()] == ["recLIVE"]
        assert journal.settleable() == []


def test_a_dead_owners_claims_are_settleable_while_it_is_still_a_zombie(journal):
    with processes.claiming_child(journal.path, "recZOMBIE") as child:
        child.kill()
        # not reaped: the pid still answers kill(pid, 0), but the kernel has let go of its lock
        processes.wait_until(lambda: processes.process_state(child.pid) == "Z", 10, "a zombie", 0.05)
        os.kill(child.pid, 0)
        assert [c.record_id for c in journal.settleable()] == ["recZOMBIE"]


def test_this_process_own_claims_are_settleable_too(journal):
    journal.begin([("recMINE", 0)])
    assert [c.record_id for c in journal.settleable()] == ["recMINE"]
