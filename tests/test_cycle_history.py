"""The recent cycles' reports in DATA_DIR: newest first, capped, replaced whole, and never in a cycle's way."""

import logging
from datetime import UTC, datetime, timedelta

from app.cycle_history import CycleHistory
from app.models import ReplenishReport
from app.paths import DataDir

START = datetime(2026, 11, 1, tzinfo=UTC)


def report(n: int) -> ReplenishReport:
    return ReplenishReport(outcome="published", started_at=START + timedelta(hours=4 * n), threshold=3000, published=n)


def test_the_newest_come_first_and_only_the_kept_number_stays(tmp_path):
    history = CycleHistory(tmp_path, keep=3)
    assert history.recent() == []
    for n in range(5):
        history.add(report(n))
    assert [r.published for r in history.recent()] == [4, 3, 2]
    assert [r.published for r in CycleHistory(tmp_path, keep=3).recent()] == [4, 3, 2]  # another process reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == [DataDir(tmp_path).replenish_history.name]  # no temp left


def test_a_damaged_file_reads_as_no_history_and_the_next_cycle_starts_a_new_one(tmp_path, caplog):
    DataDir(tmp_path).replenish_history.write_text('[{"outcome": "publ')
    history = CycleHistory(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert history.recent() == []
    assert "could not read the cycle history" in caplog.text
    history.add(report(1))
    assert history.recent() == [report(1)]


def test_a_data_dir_that_takes_no_write_costs_the_history_not_the_cycle(tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.ERROR):
        CycleHistory(not_a_folder).add(report(1))  # raises nothing
    assert "could not keep the cycle's report" in caplog.text
