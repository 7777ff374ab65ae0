"""/healthz, /readyz and /metrics: readiness names the part that is down; the metrics count what the service did."""

import logging

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.errors import StoreUnavailable
from app.main import create_app
from app.models import Backlog
from tests.support.processes import free_port
from tests.support.settings import bitable_settings, make_settings


def samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_readyz_is_ready_on_the_embedded_default(client):
    body = client.get("/readyz").json()
    assert body == {"status": "ready", "checks": {"store": "ok", "broker": "ok", "data_dir": "ok"}}


def test_readyz_names_the_broker_when_it_is_down(tmp_path):
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    settings = make_settings(tmp_path / "data", celery_broker_url=url, broker_timeout_seconds=1)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "not_ready" and body["checks"]["store"] == "ok"
    assert body["checks"]["broker"] != "ok" and "broker" in body["detail"]
    assert "guest:guest" not in response.text


def test_readyz_answers_from_recent_calls_and_names_feishu_once_a_call_failed(feishu, tmp_path):
    with TestClient(create_app(bitable_settings(feishu, tmp_path / "data", feishu_retry_attempts=1))) as client:
        feishu.reset_calls()
        for _ in range(120):
            assert client.get("/readyz").json()["checks"] == {"store": "ok", "broker": "ok", "data_dir": "ok"}
        assert feishu.count("fields_list") <= 1  # start-up's own calls are the evidence of the first window
        feishu.add_fault("server_error")
        assert client.get("/api/tasks").status_code == 503
        feishu.reset_calls()
        response = client.get("/readyz")
        assert feishu.count() == 0  # the failed call answers: no call of its own
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "ok"
    assert "store:" in response.json()["detail"] and "failed 1 times" in response.json()["checks"]["store"]


def test_readyz_with_a_window_of_zero_asks_feishu_every_time(feishu, tmp_path):
    settings = bitable_settings(feishu, tmp_path / "data", feishu_retry_attempts=1, ready_check_seconds=0)
    with TestClient(create_app(settings)) as client:
        feishu.reset_calls()
        assert client.get("/readyz").json()["checks"] == {"store": "ok", "broker": "ok", "data_dir": "ok"}
        assert client.get("/readyz").status_code == 200
        assert feishu.count("fields_list") == 2
        feishu.stop()
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "store:" in response.json()["detail"]


def test_metrics_show_the_report_backlog_as_the_store_has_it_at_the_scrape(bitable_client, feishu, monkeypatch):
    def gauges() -> tuple[float, float, float]:
        scraped = samples(bitable_client)
        names = (
            "taskmanager_report_backlog",
            "taskmanager_report_backlog_oldest_seconds",
            "taskmanager_reports_refused",
        )
        return tuple(scraped[(name, ())] for name in names)

    store = bitable_client.app.state.service.store
    monkeypatch.setattr(store, "backlog", lambda: Backlog(depth=0, oldest_age_seconds=None))
    assert gauges() == (0, 0, 0)
    monkeypatch.setattr(store, "backlog", lambda: Backlog(depth=7, oldest_age_seconds=95.5, refused=3))
    feishu.reset_calls()
    assert gauges() == (7, 95.5, 3)
    assert feishu.count() == 0  # the backlog is local


def test_metrics_answer_with_the_last_backlog_gauges_when_the_outbox_cannot_be_read(
    bitable_client, monkeypatch, caplog
):
    store = bitable_client.app.state.service.store
    monkeypatch.setattr(store, "backlog", lambda: Backlog(depth=4, oldest_age_seconds=12.0, refused=1))
    samples(bitable_client)

    def unreadable() -> Backlog:
        raise StoreUnavailable("the outbox failed: disk I/O error")

    monkeypatch.setattr(store, "backlog", unreadable)
    with caplog.at_level(logging.WARNING, logger="app.api.ops"):
        response = bitable_client.get("/metrics")
    assert response.status_code == 200
    scraped = samples(bitable_client)
    assert scraped[("taskmanager_report_backlog", ())] == 4 and scraped[("taskmanager_reports_refused", ())] == 1
    assert any("disk I/O error" in r.getMessage() for r in caplog.records)


def test_metrics_show_no_backlog_on_the_embedded_store(client):
    scraped = samples(client)
    assert (
        scraped[("taskmanager_report_backlog", ())] == scraped[("taskmanager_report_backlog_oldest_seconds", ())] == 0
    )


def test_metrics_count_what_the_service_does(feishu, tmp_path):
    with TestClient(create_app(bitable_settings(feishu, tmp_path / "data"))) as client:
        before = samples(client)
        client.post("/api/tasks/ingest", json=[{"n": 1}, {"n": 2}, {"n": 1}])
        ids = [i["record_id"] for i in client.post("/api/tasks/priority-queue", json=[{"n": 3}]).json()["items"]]
        client.post("/api/tasks/update-status", json={"SUCCESS": ids})
        client.post("/api/replenish")
        client.get("/api/stats")
        after = samples(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("taskmanager_tasks_ingested_total", outcome="created") == 2
    assert delta("taskmanager_tasks_ingested_total", outcome="duplicate") == 1
    assert delta("taskmanager_messages_published_total", priority="high", result="sent") == 1
    assert delta("taskmanager_messages_published_total", priority="default", result="sent") == 2
    assert delta("taskmanager_status_updates_total", status="SUCCESS") == 1
    assert delta("taskmanager_replenish_runs_total", outcome="published") == 1
    assert delta("taskmanager_bot_sends_total", outcome="sent") == 0  # no bot: the notice went to the log
    assert delta("taskmanager_feishu_calls_total", endpoint="batch_create", code="0") == 2
    assert delta("taskmanager_feishu_call_seconds_count", endpoint="search") >= 3
    assert after[("taskmanager_pool_tasks", (("status", "PROCESSING"),))] == 2
    assert after[("taskmanager_queue_depth", ())] == 3


def test_retries_are_counted(feishu, tmp_path):
    with TestClient(create_app(bitable_settings(feishu, tmp_path / "data"))) as client:
        before = samples(client)
        feishu.add_fault("conflict", endpoint="batch_create", times=2)
        client.post("/api/tasks/ingest", json=[{"n": 1}])
        after = samples(client)
    key = ("taskmanager_feishu_retries_total", (("endpoint", "batch_create"),))
    assert after[key] - before.get(key, 0) == 2
    key = ("taskmanager_feishu_calls_total", (("code", "1254291"), ("endpoint", "batch_create")))
    assert after[key] - before.get(key, 0) == 2


def test_bot_sends_count_cards_the_bot_took_and_only_those(feishu, tmp_path):
    feishu.add_bot("hook-metrics")
    webhook = f"{feishu.url}/open-apis/bot/v2/hook/hook-metrics"
    with TestClient(create_app(make_settings(tmp_path / "bot", feishu_robot_webhook_url=webhook))) as client:
        before = samples(client)
        client.post("/api/tasks/ingest", json=[{"n": 1}])
        client.post("/api/replenish")
        after = samples(client)
    with TestClient(create_app(make_settings(tmp_path / "log"))) as client:
        client.post("/api/tasks/ingest", json=[{"n": 1}])
        client.post("/api/replenish")
        logged = samples(client)
    key = ("taskmanager_bot_sends_total", (("outcome", "sent"),))
    assert len(feishu.bot_messages("hook-metrics")) == 1
    assert after[key] - before.get(key, 0) == 1
    assert logged[key] == after[key]  # the cycle without a bot sent nothing


def test_probes_answer_head_as_load_balancers_send_it(client):
    for path in ("/healthz", "/readyz"):
        response = client.head(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.content == b""
