"""What the service assumes of Bitable beyond what the docs spell out, checked on the target."""

import logging
from datetime import UTC, datetime, timedelta

from app.models import StatusChange, TaskStatus
from app.store.columns import IDENTIFIER
from tests.support.tasks import add_all, new_task


async def test_contains_is_a_substring_test_on_text(store):
    """The index rebuild splits the table by `contains` / `doesNotContain` on digit pairs of the identifier."""
    stored = await add_all(store, [new_task(n, live="contains") for n in range(6)])
    one = stored[0].identifier
    middle = one[20:30]
    others = [s.identifier for s in stored[1:] if middle not in s.identifier]
    condition = {"field_name": IDENTIFIER, "value": [middle]}
    hits = await store.table.search(
        filter_={"conjunction": "and", "conditions": [condition | {"operator": "contains"}]}, field_names=[IDENTIFIER]
    )
    assert [record_id for record_id, _ in hits.records] == [stored[0].record_id]
    misses = await store.table.search(
        filter_={"conjunction": "and", "conditions": [condition | {"operator": "doesNotContain"}]},
        field_names=[IDENTIFIER],
    )
    assert misses.total == len(others)


async def test_the_index_rebuilds_parts_add_up_to_the_table(store, caplog):
    caplog.set_level(logging.WARNING)
    await add_all(store, [new_task(n, live="parts") for n in range(40)])
    assert await store.reindex() == 40
    assert not [r for r in caplog.records if "reading it whole" in r.getMessage()]


async def test_the_newest_failures_come_first_by_finish_time(store):
    """/api/stats' recent failures: the FAILED search sorted by FinishedAt, descending (where empties go is open)."""
    stored = await add_all(store, [new_task(n, live="newest") for n in range(3)])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    await store.update(
        [
            StatusChange(s.record_id, TaskStatus.FAILED, error=f"live {n}", finished_at=start + timedelta(minutes=n))
            for n, s in enumerate(stored)
        ]
    )
    page = await store.newest_failed(500)
    ours = [record.error for record in page.items if record.error and record.error.startswith("live ")]
    assert ours[:3] == ["live 2", "live 1", "live 0"]
