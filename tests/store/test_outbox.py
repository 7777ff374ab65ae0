"""The outbox file alone: acceptance order, durability, group commit, what is known, and the backlog."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from app.models import StatusChange, TaskStatus
from app.store.outbox import Outbox
from app.store.sqlite_file import SqliteFile


@pytest.fixture
async def outbox(tmp_path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "outbox-tblT.db")
    box.open()
    yield box
    await box.close()


def change(record_id: str, status: TaskStatus = TaskStatus.SUCCESS, **report) -> StatusChange:
    return StatusChange(record_id, status, **report)


async def test_changes_come_out_in_the_order_they_were_accepted_and_stay_until_done(outbox):
    finished = datetime(2026, 11, 1, 8, 0, 0, 123_000, tzinfo=UTC)
    await outbox.append([change("recA", result={"score": 1.5, "名": "α"}, finished_at=finished), change("recB")])
    await outbox.append([change("recA", TaskStatus.FAILED, error="boom")])
    entries = outbox.take(10)
    assert [(e.change.record_id, e.change.status) for e in entries] == [
        ("recA", TaskStatus.SUCCESS),
        ("recB", TaskStatus.SUCCESS),
        ("recA", TaskStatus.FAILED),
    ]
    assert entries[0].change == change("recA", result={"score": 1.5, "名": "α"}, finished_at=finished)
    assert entries[2].change.error == "boom"
    assert [e.seq for e in outbox.take(2)] == [e.seq for e in entries[:2]]  # taking leaves them in place
    assert [e.seq for e in outbox.take(10, until=entries[1].seq)] == [e.seq for e in entries[:2]]
    outbox.done(entries[:2])
    assert [e.seq for e in outbox.take(10)] == [entries[2].seq]


async def test_sequence_numbers_are_never_reused_once_the_outbox_empties(outbox, tmp_path):
    await outbox.append([change("recA"), change("recB")])
    until = outbox.newest()  # a flush began: it writes what was accepted up to here
    outbox.done(outbox.take(10, until))
    await outbox.append([change("recC")])  # accepted after that flush began
    assert outbox.take(10, until) == []
    await outbox.close()
    outbox.open()
    await outbox.append([change("recD")])
    assert [e.seq > until for e in outbox.take(10)] == [True, True]


async def test_what_waits_is_read_per_record_in_order(outbox):
    await outbox.append([change("recA", TaskStatus.PENDING), change("recB")])
    await outbox.append([change("recA", TaskStatus.CANCELLED)])
    waiting = outbox.waiting(["recA", "recC"])
    assert list(waiting) == ["recA"]
    assert [c.status for c in waiting["recA"]] == [TaskStatus.PENDING, TaskStatus.CANCELLED]


async def test_accepted_changes_survive_a_restart(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.open()
    await box.append([change("recA"), change("recB", TaskStatus.FAILED)])
    await box.close()
    box = Outbox(tmp_path / "outbox.db")
    box.open()
    assert [(e.change.record_id, e.change.status) for e in box.take(10)] == [
        ("recA", TaskStatus.SUCCESS),
        ("recB", TaskStatus.FAILED),
    ]
    await box.close()


@contextmanager
def counted_commits(monkeypatch):
    commits = []
    transaction = SqliteFile.transaction

    @contextmanager
    def counting(self, durable: bool = False):
        with transaction(self, durable) as db:
            yield db
        commits.append(durable)

    monkeypatch.setattr(SqliteFile, "transaction", counting)
    yield commits


async def test_concurrent_reports_share_one_durable_commit(outbox, monkeypatch):
    with counted_commits(monkeypatch) as commits:
        await asyncio.gather(*(outbox.append([change(f"rec{n:03}")]) for n in range(50)))
    assert commits and all(commits)  # every commit of a report is synced
    assert len(commits) <= 3  # not one a report: those that arrive during a commit share the next
    assert len(outbox.take(100)) == 50


async def test_a_record_is_known_when_remembered_or_waiting_and_forgotten_once_finished(outbox):
    await outbox.append([change("recA", TaskStatus.PENDING)], found=["recFOUND"])
    outbox.remember(["recCLAIMED", "recOTHER"], forget=["recOTHER"])
    assert outbox.known(["recA", "recFOUND", "recCLAIMED", "recOTHER", "recNEW"]) == {"recA", "recFOUND", "recCLAIMED"}
    await outbox.append([change("recFOUND", TaskStatus.SUCCESS), change("recCLAIMED", TaskStatus.PENDING)])
    outbox.done(outbox.take(10))
    # the last change of recA and recCLAIMED leaves them in workers' hands; recFOUND is finished
    assert outbox.known(["recA", "recFOUND", "recCLAIMED"]) == {"recCLAIMED"}


async def test_refused_changes_are_kept_aside_with_their_reason_and_not_taken_again(outbox):
    await outbox.append([change("recA", error="x" * 10), change("recB")])
    entries = outbox.take(10)
    outbox.done(entries, refused=[(entries[0], "code 1254130: a cell is too large")])
    assert outbox.take(10) == []
    assert (outbox.backlog().depth, outbox.backlog().refused) == (0, 1)  # shown in /api/stats and /metrics
    [refused] = outbox.refused()
    assert (refused.change, refused.reason) == (change("recA", error="x" * 10), "code 1254130: a cell is too large")


async def test_the_backlog_counts_what_waits_and_ages_the_oldest(outbox):
    assert (outbox.backlog().depth, outbox.backlog().oldest_age_seconds) == (0, None)
    await outbox.append([change("recA"), change("recB")])
    await asyncio.sleep(0.05)  # the oldest report ages; nothing else runs meanwhile
    await outbox.append([change("recC")])
    backlog = outbox.backlog()
    assert backlog.depth == 3 and backlog.oldest_age_seconds >= 0.05
    outbox.done(outbox.take(2))
    assert outbox.backlog().depth == 1 and outbox.newest() == outbox.take(1)[0].seq
    outbox.done(outbox.take(1))
    assert (outbox.backlog().depth, outbox.newest()) == (0, None)
