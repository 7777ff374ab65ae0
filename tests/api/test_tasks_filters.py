"""The filtered list, the payload search and the bulk actions, on both stores (Bitable over the emulator)."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.identity import task_identifier
from app.main import create_app
from tests.feishu.emulator import DEFAULT_FIELDS
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.settings import bitable_settings


@pytest.fixture(params=["client", "bitable_client"])
def any_client(request):
    return request.getfixturevalue(request.param)


def ingest(client, payloads, **params) -> list[str]:
    body = client.post("/api/tasks/ingest", json=payloads, params=params).json()
    return [item["record_id"] for item in body["items"]]


def listed(client, **params) -> list[str]:
    """Every record id the filtered list answers, following next_page_token to the end."""
    record_ids, token = [], None
    while True:
        response = client.get("/api/tasks", params={**params, "limit": 2, **({"page_token": token} if token else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        record_ids += [item["record_id"] for item in body["items"]]
        if not (token := body["next_page_token"]):
            return record_ids


def test_the_list_filters_by_status_priority_and_creation_time(any_client):
    low = ingest(any_client, [{"n": n} for n in range(3)], priority=1)
    high = ingest(any_client, [{"n": n} for n in range(3, 6)], priority=8)
    any_client.post("/api/tasks/update-status", json={"FAILED": [high[0]]})
    assert listed(any_client, priority=1) == low
    assert listed(any_client, priority_min=2, priority_max=8) == high
    assert listed(any_client, status="PENDING", priority_min=8) == high[1:]
    assert listed(any_client, status="FAILED", priority_max=1) == []
    created = datetime.fromisoformat(any_client.get(f"/api/tasks/{high[0]}").json()["created_at"])
    assert set(listed(any_client, created_after=created.isoformat())) >= set(high)
    assert set(listed(any_client, created_before=created.isoformat())).isdisjoint(high)
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert listed(any_client, created_after=later) == []


def test_a_task_is_found_by_its_payload_or_its_identifier(any_client):
    (record_id,) = ingest(any_client, [{"alpha": "x", "n": 1}])
    found = any_client.post("/api/tasks/find", json={"n": 1, "alpha": "x"})  # keys in another order: the same task
    assert found.status_code == 200, found.text
    assert found.json()["record_id"] == record_id
    identifier = task_identifier({"alpha": "x", "n": 1})
    assert [
        t["record_id"] for t in any_client.get("/api/tasks", params={"identifier": identifier}).json()["items"]
    ] == [record_id]
    missing = any_client.post("/api/tasks/find", json={"n": 2})
    assert missing.status_code == 404 and task_identifier({"n": 2}) in missing.json()["detail"]
    assert any_client.post("/api/tasks/find", json=[{"n": 1}]).status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"priority": "nan"},
        {"priority": "inf"},
        {"priority_min": "high"},
        {"priority_min": 5, "priority_max": 1},
        {"created_after": "2026-12-01T08:00:00"},  # no time zone
        {"created_after": "yesterday"},
        {"created_after": "2026-12-01T08:00:00Z", "created_before": "2026-12-01T08:00:00Z"},
        {"identifier": "ABC"},
        {"status": "DONE"},
    ],
)
@pytest.mark.parametrize("path", ["GET /api/tasks", "POST /api/tasks/bulk/retry", "POST /api/tasks/bulk/cancel"])
def test_bad_filter_values_are_a_clear_422(client, params, path):
    method, url = path.split()
    if "bulk" in url and "status" in params:
        params = {"status": "PENDING"}  # a bulk action takes no status: an unknown parameter is ignored, not a 422
        assert client.request(method, url, params={**params, "dry_run": "true"}).status_code == 200
        return
    response = client.request(method, url, params=params)
    assert response.status_code == 422, response.text
    assert set(response.json()) >= {"error", "detail"}


def test_action_names_are_not_read_as_record_ids(client):
    assert client.get("/api/tasks/find").status_code == 405
    assert client.get("/api/tasks/bulk/retry").status_code == 405
    assert client.get("/api/tasks/bulk").status_code == 404
    assert "record id" not in client.get("/api/tasks/bulk").text


def test_bulk_retry_counts_first_then_retries_every_matching_failed_task(any_client):
    failed = ingest(any_client, [{"n": n} for n in range(4)], priority=2)
    other = ingest(any_client, [{"n": n} for n in range(4, 6)], priority=9)
    any_client.post("/api/tasks/update-status", json={"FAILED": [*failed[:3], other[0]], "SUCCESS": [failed[3]]})
    dry = any_client.post("/api/tasks/bulk/retry", params={"priority_max": 5, "dry_run": "true"})
    assert dry.json() == {"matched": 3, "changed": 0, "dry_run": True, "more": False}
    assert listed(any_client, status="FAILED") == [*failed[:3], other[0]]  # the dry run changed nothing
    done = any_client.post("/api/tasks/bulk/retry", params={"priority_max": 5}).json()
    assert done == {"matched": 3, "changed": 3, "dry_run": False, "more": False}
    assert listed(any_client, status="FAILED") == [other[0]]
    assert set(listed(any_client, status="PENDING")) == {*failed[:3], other[1]}
    assert any_client.post("/api/tasks/bulk/retry", params={"priority_max": 5}).json()["matched"] == 0


def test_bulk_cancel_cancels_only_matching_pending_tasks(any_client):
    record_ids = ingest(any_client, [{"n": n} for n in range(5)], priority=3)
    any_client.post("/api/tasks/update-status", json={"SUCCESS": [record_ids[0]]})
    identifier = task_identifier({"n": 4})
    assert any_client.post("/api/tasks/bulk/cancel", params={"identifier": identifier, "dry_run": True}).json() == {
        "matched": 1,
        "changed": 0,
        "dry_run": True,
        "more": False,
    }
    done = any_client.post("/api/tasks/bulk/cancel", params={"priority": 3}).json()
    assert (done["matched"], done["changed"]) == (4, 4)
    assert listed(any_client, status="CANCELLED") == record_ids[1:]
    assert listed(any_client, status="SUCCESS") == record_ids[:1]


def test_bitable_bulk_retry_reads_by_pages_and_writes_in_batches(bitable_client, feishu):
    record_ids = ingest(bitable_client, [{"n": n} for n in range(1_200)])
    bitable_client.post("/api/tasks/update-status", json={"FAILED": record_ids})
    assert bitable_client.get("/api/tasks", params={"status": "FAILED", "limit": 1}).json()["total"] == 1_200
    feishu.reset_calls()
    assert bitable_client.post("/api/tasks/bulk/retry").json()["changed"] == 1_200
    assert feishu.count("search") == 3  # 500 a page
    assert feishu.count("batch_update") == 2  # 1,000 a call, never one per task
    statuses = {fields["Status"] for fields in feishu.rows(APP_TOKEN, TABLE_ID).values()}
    assert statuses == {"PENDING"}


def test_bitable_identifier_lookup_asks_the_index_before_the_table(bitable_client, feishu):
    (record_id,) = ingest(bitable_client, [{"n": 1}])
    feishu.reset_calls()
    found = bitable_client.post("/api/tasks/find", json={"n": 1}).json()
    assert found["record_id"] == record_id
    assert (feishu.count("search"), feishu.count("batch_get")) == (0, 1)
    by_hand = task_identifier({"typed": "by hand"})  # a row the index never saw: one search finds it
    (typed,) = feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": by_hand, "Status": "PENDING"}])
    feishu.reset_calls()
    page = bitable_client.get("/api/tasks", params={"identifier": by_hand}).json()
    assert [item["record_id"] for item in page["items"]] == [typed]
    assert feishu.count("search") == 1


def test_a_priority_filter_on_a_table_without_that_column_is_a_clear_422(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblNOPRIO", [spec for spec in DEFAULT_FIELDS if spec[0] != "Priority"])
    settings = bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblNOPRIO")
    with TestClient(create_app(settings)) as client:
        ingest(client, [{"n": 1}])
        response = client.get("/api/tasks", params={"priority_min": 1})
        assert response.status_code == 422 and "no Priority column" in response.json()["detail"]
        assert len(listed(client, created_before=(datetime.now(UTC) + timedelta(days=1)).isoformat())) == 1
