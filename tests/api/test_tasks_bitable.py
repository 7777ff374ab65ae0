"""The task routes over the real SDK against the emulator: what a scraper sees when Feishu misbehaves."""

import json
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from app.main import create_app
from tests.feishu.emulator import DEFAULT_FIELDS
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.settings import bitable_settings


def test_a_thousand_tasks_cost_one_write_call(bitable_client, feishu):
    feishu.reset_calls()
    body = bitable_client.post("/api/tasks/ingest", json=[{"n": n} for n in range(1_000)]).json()
    assert body["created"] == 1_000
    assert feishu.count("batch_create") == 1
    assert feishu.count("search") + feishu.count("batch_get") == 0


def test_feishu_down_answers_503_with_retry_after_and_what_was_stored(bitable_client, feishu):
    bitable_client.post("/api/tasks/ingest", json=[{"n": 0}])
    feishu.add_fault("server_error", endpoint="batch_create")
    response = bitable_client.post("/api/tasks/ingest", json=[{"n": 0}, {"n": 1}])
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["error"] == "store_unavailable" and "send" in body["detail"]
    assert [item["outcome"] for item in body["items"]] == ["duplicate", "not_stored"]
    feishu.clear_faults()
    again = bitable_client.post("/api/tasks/ingest", json=[{"n": 0}, {"n": 1}]).json()
    assert [item["outcome"] for item in again["items"]] == ["duplicate", "created"]
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 2


def test_concurrent_requests_with_overlap_store_each_payload_once(bitable_client, feishu):
    requests = [[{"n": n} for n in range(start, start + 50)] for start in range(0, 200, 25)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: bitable_client.post("/api/tasks/ingest", json=body).json(), requests))
    assert sum(answer["created"] for answer in answers) == 225
    record_ids = {}
    for item in (item for answer in answers for item in answer["items"]):
        assert record_ids.setdefault(item["identifier"], item["record_id"]) == item["record_id"]
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 225


def test_feishu_unreachable_is_a_503(bitable_client, feishu):
    feishu.stop()
    response = bitable_client.get("/api/tasks/recABC")
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"


def test_a_payload_number_too_large_for_a_float_is_stored_without_its_mirror(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblMirror", [*DEFAULT_FIELDS, ("score", 2), ("title", 1)])
    settings = bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblMirror")
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/tasks/ingest", json=[{"score": 10**400, "title": 10**400}])
    assert response.status_code == 200, response.text
    (row,) = feishu.rows(APP_TOKEN, "tblMirror").values()
    assert json.loads(row["Payload"]) == {"score": 10**400, "title": 10**400}
    assert not {"score", "title"} & set(row)


def test_stats_show_the_store_s_feishu_calls_per_endpoint_and_the_rate_limited_ones(bitable_client, feishu):
    feishu.add_fault("rate_limit", endpoint="batch_create", times=1)
    bitable_client.post("/api/tasks/ingest", json=[{"n": n} for n in range(3)])
    usage = bitable_client.get("/api/stats").json()["feishu"]
    assert usage["calls"]["batch_create"] == feishu.count("batch_create") == 2  # refused once, then written
    assert usage["rate_limited"] == {"batch_create": 1}
    assert usage["calls"]["search"] >= 1  # the count /api/stats itself asked for
