"""Queue-side routes and stats: on the embedded default (a real filesystem broker), and stats on emulated Bitable."""

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from app.locks import FileLock
from app.main import create_app
from app.models import Backlog
from tests.support.settings import make_settings


def ingest(client, payloads, **params):
    return client.post("/api/tasks/ingest", json=payloads, params=params).json()


def test_priority_queue_publishes_new_tasks_and_reports_each(client):
    answer = client.post("/api/tasks/priority-queue", json=[{"n": 1}, {"n": 2}, {"n": 1}]).json()
    assert (answer["received"], answer["published"]) == (3, 2)
    assert [i["outcome"] for i in answer["items"]] == ["published", "published", "published"]
    again = client.post("/api/tasks/priority-queue", json=[{"n": 1}]).json()
    assert [i["outcome"] for i in again["items"]] == ["already_queued"]
    forced = client.post("/api/tasks/priority-queue", params={"force": "true"}, json=[{"n": 1}]).json()
    assert [i["outcome"] for i in forced["items"]] == ["published"]
    stats = client.get("/api/stats").json()
    assert stats["counts"]["PROCESSING"] == 2 and stats["queue_depth"] == 3


def test_priority_queue_validates_like_ingest(client):
    assert client.post("/api/tasks/priority-queue", json={"n": 1}).status_code == 422
    assert client.post("/api/tasks/priority-queue", json=[{"big": "x" * 100_001}]).status_code == 422
    assert client.get("/api/stats").json()["counts"]["PENDING"] == 0


def test_replenish_route_runs_the_cycle_and_dry_run_changes_nothing(client):
    ingest(client, [{"n": n} for n in range(3)])
    dry = client.post("/api/replenish", params={"dry_run": "true"}).json()
    assert (dry["outcome"], dry["claimed"], dry["published"]) == ("dry_run", 3, 0)
    assert client.get("/api/stats").json()["counts"]["PENDING"] == 3
    report = client.post("/api/replenish").json()
    assert (report["outcome"], report["published"], report["depth_before"], report["depth_after"]) == (
        "published",
        3,
        0,
        3,
    )
    stats = client.get("/api/stats").json()
    assert stats["counts"]["PROCESSING"] == 3
    assert stats["last_replenish"]["published"] == 3
    assert stats["queue"] == "celery"
    assert stats["replenish_threshold"] == report["threshold"]
    assert [cycle["outcome"] for cycle in stats["recent_cycles"]] == ["published"]  # the dry run is not kept
    record_id = client.get("/api/tasks", params={"status": "PROCESSING"}).json()["items"][0]["record_id"]
    client.post("/api/tasks/update-status", json={"FAILED": [{"record_id": record_id, "error": "boom"}]})
    stats = client.get("/api/stats").json()
    assert [(f["record_id"], f["error"]) for f in stats["recent_failures"]] == [(record_id, "boom")]
    assert stats["feishu"] is None  # the embedded store makes no Feishu call


def test_replenish_while_another_cycle_runs_is_409(client, tmp_path):
    lock = FileLock(tmp_path / "data" / "replenish.lock")
    assert lock.acquire()
    try:
        response = client.post("/api/replenish")
        assert response.status_code == 409 and response.json()["error"] == "conflict"
    finally:
        lock.release()


def test_stats_names_the_next_replenish_of_the_scheduler_owner(client):
    stats = client.get("/api/stats").json()
    assert stats["scheduler_owner"] is True
    assert stats["next_replenish"] is not None


@pytest.mark.broker
def test_a_missing_queue_is_named_in_stats_and_makes_the_cycle_a_503(tmp_path, rabbit_url, queue_name):
    settings = make_settings(tmp_path / "data", celery_broker_url=rabbit_url, celery_queue=queue_name)
    with TestClient(create_app(settings)) as client:
        ingest(client, [{"n": 1}, {"n": 2}])
        stats = client.get("/api/stats")
        assert stats.status_code == 200  # the pool's counts are still worth reading
        body = stats.json()
        assert body["counts"]["PENDING"] == 2 and body["queue_depth"] is None
        assert body["queue_error"]["error"] == "queue_missing"
        assert queue_name in body["queue_error"]["detail"]

        cycle = client.post("/api/replenish")
        assert cycle.status_code == 503, cycle.text
        failed = cycle.json()
        assert failed["error"] == "queue_missing" and queue_name in failed["detail"]
        assert failed["report"]["outcome"] == "failed" and failed["report"]["published"] == 0
        assert client.get("/api/stats").json()["counts"]["PENDING"] == 2  # nothing claimed, nothing lost

        dry = client.post("/api/replenish", params={"dry_run": "true"})
        assert dry.status_code == 503 and dry.json()["error"] == "queue_missing"


def test_stats_on_the_embedded_store_count_at_once_and_have_no_backlog(client):
    before = client.get("/api/stats").json()
    assert before["backlog"] is None and before["counts"]["PENDING"] == 0
    ingest(client, [{"n": 1}, {"n": 2}])
    after = client.get("/api/stats").json()
    assert after["counts"]["PENDING"] == 2  # SQLite counts are free: never kept
    assert datetime.fromisoformat(after["counts_as_of"]) >= datetime.fromisoformat(before["counts_as_of"])


def test_stats_on_bitable_are_counted_once_a_window_and_show_the_backlog(bitable_client, feishu, monkeypatch):
    ingest(bitable_client, [{"n": n} for n in range(3)])
    first = bitable_client.get("/api/stats").json()
    assert first["counts"]["PENDING"] == 3
    feishu.reset_calls()
    answers = [bitable_client.get("/api/stats").json() for _ in range(40)]
    assert feishu.count() == 0
    assert {a["counts_as_of"] for a in answers} == {first["counts_as_of"]}
    monkeypatch.setattr(
        bitable_client.app.state.service.store, "backlog", lambda: Backlog(depth=3, oldest_age_seconds=42.5, refused=2)
    )
    assert bitable_client.get("/api/stats").json()["backlog"] == {"depth": 3, "oldest_age_seconds": 42.5, "refused": 2}
