"""One replenish cycle on the target's table and the embedded broker: ingest, pick, lease recovery, claim,
publish; then prune. Lease recovery (on by default) and prune send the date filters Feishu is strictest about."""

from app.main import running_services
from app.models import BulkStatusUpdate, TaskStatus


async def test_a_cycle_with_lease_recovery_claims_and_publishes_then_prune_removes_finished_rows(target, tmp_path):
    settings = target.settings(tmp_path / "data", lease_timeout_hours=24, replenish_threshold=100)
    async with running_services(settings) as services:
        service = services.tasks
        ingested = await service.ingest_tasks([{"live": n} for n in range(5)])
        assert ingested.created == 5
        report = await services.cycle.run()
        assert (report.outcome, report.published, report.failed) == ("published", 5, 0)
        assert report.depth_after == 5  # the embedded broker's queue holds them
        ids = [item.record_id for item in ingested.items]
        records = await service.store.get(ids)
        assert {r.status for r in records.values()} == {TaskStatus.PROCESSING}
        assert all(r.attempts == 1 and r.claimed_at is not None for r in records.values())

        await service.update_status(BulkStatusUpdate.model_validate({"SUCCESS": ids[:2]}))
        assert await service.prune(TaskStatus.SUCCESS, 0) == 2
        assert set(await service.store.get(ids)) == set(ids[2:])
        again = await service.ingest_tasks([{"live": 0}])  # pruned, still a duplicate
        assert again.duplicates == 1
