"""The replenish cycle over the real SDK (emulator) and real RabbitMQ: its cost, and what a dead bot does."""

import logging
import time

import pytest
from fastapi.testclient import TestClient

from app.broker import CeleryPublisher
from app.claims import ClaimJournal
from app.main import Services, create_app, wire
from app.notify import FeishuBot
from app.store.bitable import BitableTaskStore
from tests.support.brokers import declare_workers_queue, passive_declare
from tests.support.settings import bitable_settings

pytestmark = pytest.mark.broker


@pytest.fixture
async def wired(feishu, tmp_path, rabbit_url, queue_name):
    declare_workers_queue(rabbit_url, queue_name, max_priority=10)  # the workers' app owns the queue
    feishu.add_bot("hook", secret="right-secret")
    settings = bitable_settings(
        feishu,
        tmp_path / "data",
        celery_broker_url=rabbit_url,
        celery_queue=queue_name,
        feishu_robot_webhook_url=f"{feishu.url}/open-apis/bot/v2/hook/hook",
    )
    store = BitableTaskStore.from_settings(settings)
    await store.open()
    publisher = CeleryPublisher(settings)
    journal = ClaimJournal(settings.data_dir / "claims.db")
    journal.open()
    bots = []

    def build(secret: str) -> Services:
        bots.append(FeishuBot(settings.feishu_robot_webhook_url, secret))
        return wire(store, settings, publisher=publisher, notifier=bots[-1], journal=journal)

    yield build
    for bot in bots:
        await bot.close()
    journal.close()
    await publisher.close()
    await store.close()


async def test_a_500_task_cycle_costs_three_searches_and_one_write(wired, feishu, rabbit_url, queue_name):
    services = wired("right-secret")
    await services.tasks.ingest_tasks([{"n": n} for n in range(600)])
    feishu.reset_calls()
    started = time.perf_counter()
    report = await services.cycle.run()
    elapsed = time.perf_counter() - started
    bitable = {c: feishu.count(c) for c in ("search", "batch_update", "batch_create", "batch_get")}
    assert (report.outcome, report.published, report.pending_left) == ("published", 500, 100)
    assert bitable == {"search": 3, "batch_update": 1, "batch_create": 0, "batch_get": 0}  # leases, pick, count
    assert passive_declare(rabbit_url, queue_name)[0] == 500
    (card,) = feishu.bot_messages("hook")
    assert card["card"]["header"]["template"] == "orange"  # 100 left < a batch of 500: the pool runs low
    print(f"500-task cycle: {elapsed:.2f}s, Feishu calls {bitable}")


async def test_a_bot_that_refuses_every_message_does_not_stop_the_cycle(wired, feishu, caplog):
    services = wired("wrong-secret")
    await services.tasks.ingest_tasks([{"n": n} for n in range(3)])
    caplog.set_level(logging.WARNING)
    report = await services.cycle.run()
    assert (report.outcome, report.published) == ("published", 3)
    assert feishu.bot_messages("hook") == []
    assert any("19021" in record.getMessage() for record in caplog.records)


def test_readyz_and_an_ingest_name_an_exhausted_quota(feishu, tmp_path):
    with TestClient(create_app(bitable_settings(feishu, tmp_path / "data"))) as client:
        assert client.get("/readyz").status_code == 200
        feishu.monthly_quota = 0
        ingest = client.post("/api/tasks/ingest", json=[{"n": 1}])
        ready = client.get("/readyz")  # answered by the ingest's refused call
        calls = feishu.count("batch_create")
    assert ready.status_code == 503 and "quota for this tenant is used up" in ready.json()["checks"]["store"]
    assert ingest.status_code == 502 and ingest.json()["error"] == "quota_exhausted"
    assert calls == 1  # refused once, not retried
