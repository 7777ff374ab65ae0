"""The task routes on the embedded store: ingest, dedup, status updates, and their 4xx answers."""

import json

import pytest

from app.identity import task_identifier


def ingest(client, payloads, **params):
    return client.post("/api/tasks/ingest", json=payloads, params=params)


def assert_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"}
    if error:
        assert body["error"] == error
    return body


def test_ingest_answers_each_item_and_the_totals(client):
    response = ingest(client, [{"a": 1}, {"b": 2}])
    assert response.status_code == 200
    body = response.json()
    assert (body["received"], body["created"], body["duplicates"]) == (2, 2, 0)
    assert [item["outcome"] for item in body["items"]] == ["created", "created"]
    assert body["items"][0]["identifier"] == task_identifier({"a": 1})
    assert all(item["record_id"].startswith("rec") for item in body["items"])


def test_duplicates_in_one_request_with_keys_in_another_order_are_stored_once(client):
    body = ingest(client, [{"a": 1, "b": 2}, {"b": 2, "a": 1}]).json()
    assert (body["created"], body["duplicates"]) == (1, 1)
    assert body["items"][0]["record_id"] == body["items"][1]["record_id"]
    assert client.get("/api/tasks").json()["total"] == 1


def test_duplicates_across_requests_are_skipped(client):
    first = ingest(client, [{"a": 1}]).json()["items"][0]
    body = ingest(client, [{"a": 1}, {"c": 3}]).json()
    assert [item["outcome"] for item in body["items"]] == ["duplicate", "created"]
    assert body["items"][0]["record_id"] == first["record_id"]


def test_priority_is_written(client):
    record_id = ingest(client, [{"a": 1}], priority=9).json()["items"][0]["record_id"]
    task = client.get(f"/api/tasks/{record_id}").json()
    assert task["priority"] == 9
    assert task["status"] == "PENDING"
    assert task["payload"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"a": 1}, 422, "invalid_input"),
        ([{"a": 1}, 5], 422, "invalid_input"),
        ([{"a": 1}, [1]], 422, "invalid_input"),
        ("just text", 422, "invalid_input"),
        ([{"big": "x" * 100_000}], 422, "invalid_input"),
    ],
)
def test_bad_bodies_get_a_clear_4xx_and_write_nothing(client, body, status, error):
    assert_error(ingest(client, body), status, error)
    assert client.get("/api/tasks").json()["total"] == 0


def test_invalid_json_is_a_400(client):
    response = client.post("/api/tasks/ingest", content=b'[{"a": 1,', headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json")


def test_nan_in_a_payload_is_refused(client):
    response = client.post("/api/tasks/ingest", content=b'[{"a": NaN}]', headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)
    assert client.get("/api/tasks").json()["total"] == 0


def test_a_payload_of_exactly_the_limit_is_accepted(client):
    filler = "x" * (100_000 - len(json.dumps({"big": ""}, separators=(",", ":"))))
    assert ingest(client, [{"big": filler}]).status_code == 200


def test_too_many_tasks_is_a_413(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.support.settings import make_settings

    with TestClient(create_app(make_settings(tmp_path, store="sqlite", max_tasks_per_request=3))) as small:
        body = assert_error(ingest(small, [{"n": n} for n in range(4)]), 413, "too_many_tasks")
        assert "MAX_TASKS_PER_REQUEST" in body["detail"]
        assert small.get("/api/tasks").json()["total"] == 0


def test_update_status_moves_tasks_and_reports_unknown_ids(client):
    ids = [item["record_id"] for item in ingest(client, [{"n": n} for n in range(3)]).json()["items"]]
    response = client.post(
        "/api/tasks/update-status", json={"SUCCESS": ids[:2], "FAILED": [ids[2], "recUNKNOWN000000"]}
    )
    assert response.status_code == 200
    assert response.json() == {"updated": {"SUCCESS": 2, "FAILED": 1}, "not_found": ["recUNKNOWN000000"]}
    assert client.get(f"/api/tasks/{ids[2]}").json()["status"] == "FAILED"


@pytest.mark.parametrize(
    "body",
    [{"DONE": ["rec1"]}, {"PROCESSING": ["rec1"]}, {"SUCCESS": ["rec1"], "FAILED": ["rec1"]}, {"SUCCESS": "rec1"}, []],
)
def test_bad_status_updates_are_422_and_change_nothing(client, body):
    record_id = ingest(client, [{"n": 1}]).json()["items"][0]["record_id"]
    body = json.loads(json.dumps(body).replace("rec1", record_id))
    assert_error(client.post("/api/tasks/update-status", json=body), 422, "invalid_input")
    assert client.get(f"/api/tasks/{record_id}").json()["status"] == "PENDING"


def test_get_unknown_task_is_404(client):
    assert_error(client.get("/api/tasks/recNOPE"), 404, "not_found")
    assert_error(client.get("/api/tasks/bad%20id"), 422)


def test_list_pages_and_filters(client):
    ids = [item["record_id"] for item in ingest(client, [{"n": n} for n in range(5)]).json()["items"]]
    client.post("/api/tasks/update-status", json={"SUCCESS": ids[:2]})
    page = client.get("/api/tasks", params={"status": "PENDING", "limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_page_token"]
    rest = client.get("/api/tasks", params={"status": "PENDING", "page_token": page["next_page_token"]}).json()
    assert {i["record_id"] for i in page["items"] + rest["items"]} == set(ids[2:])
    assert_error(client.get("/api/tasks", params={"status": "DONE"}), 422)
    assert_error(client.get("/api/tasks", params={"limit": 0}), 422)


def test_retry_and_cancel_follow_the_allowed_moves(client):
    a, b = (item["record_id"] for item in ingest(client, [{"n": 1}, {"n": 2}]).json()["items"])
    assert_error(client.post(f"/api/tasks/{a}/retry"), 409, "conflict")
    assert client.delete(f"/api/tasks/{a}").json()["status"] == "CANCELLED"
    assert_error(client.delete(f"/api/tasks/{a}"), 409, "conflict")
    assert client.post(f"/api/tasks/{a}/retry").json()["status"] == "PENDING"
    client.post("/api/tasks/update-status", json={"FAILED": [b]})
    retried = client.post(f"/api/tasks/{b}/retry").json()
    assert (retried["status"], retried["attempts"]) == ("PENDING", 0)
    assert_error(client.delete("/api/tasks/recNOPE"), 404)


def test_unknown_routes_keep_the_error_shape(client):
    assert_error(client.get("/api/nope"), 404, "not_found")
    assert_error(client.put("/api/tasks/ingest"), 405)


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/tasks/ingest"), ("DELETE", "/api/tasks/priority-queue"), ("GET", "/api/tasks/update-status")],
)
def test_an_action_route_with_the_wrong_method_is_405_not_a_missing_task(client, method, path):
    body = assert_error(client.request(method, path), 405, "method_not_allowed")
    assert "record id" not in json.dumps(body)
    assert client.request(method, path).headers["allow"] == "POST"


def test_a_duplicate_sent_with_a_priority_keeps_its_own_and_the_answer_says_so(client):
    first = ingest(client, [{"a": 1}], priority=1).json()
    assert first["note"] is None
    body = ingest(client, [{"a": 1}, {"b": 2}], priority=5).json()
    assert [item["outcome"] for item in body["items"]] == ["duplicate", "created"]
    assert "priority" in body["note"] and "1 duplicate" in body["note"]
    assert client.get(f"/api/tasks/{first['items'][0]['record_id']}").json()["priority"] == 1
    assert ingest(client, [{"a": 1}]).json()["note"] is None  # no priority asked for: nothing to say
