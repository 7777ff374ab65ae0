"""PATCH /api/tasks/{record_id}: a PENDING task's new priority, on SQLite and on Bitable over the strict emulator."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.feishu.emulator import DEFAULT_FIELDS
from tests.support.feishu import APP_TOKEN
from tests.support.settings import bitable_settings, make_settings


@pytest.fixture(params=["sqlite", "bitable"])
def api(request, tmp_path) -> Iterator[TestClient]:
    """A service whose cycle claims one task, so the order it picks in shows."""
    if request.param == "sqlite":
        settings = make_settings(tmp_path / "data", store="sqlite", replenish_batch_size=1)
    else:
        settings = bitable_settings(request.getfixturevalue("feishu"), tmp_path / "data", replenish_batch_size=1)
    with TestClient(create_app(settings)) as client:
        yield client


def ingest(client: TestClient, payloads: list[dict], priority: int) -> list[str]:
    answer = client.post("/api/tasks/ingest", params={"priority": priority}, json=payloads)
    assert answer.status_code == 200, answer.text
    return [item["record_id"] for item in answer.json()["items"]]


def test_a_changed_priority_is_answered_with_the_task_and_the_next_cycle_picks_by_it(api):
    first, second, third = ingest(api, [{"n": 1}, {"n": 2}, {"n": 3}], priority=5)
    answer = api.patch(f"/api/tasks/{third}", json={"priority": 6})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["record_id"], body["status"], body["priority"], body["payload"]) == (third, "PENDING", 6, {"n": 3})
    assert api.get(f"/api/tasks/{third}").json() == body
    assert api.patch(f"/api/tasks/{first}", json={"priority": -1_000_000}).json()["priority"] == -1_000_000
    for expected in (third, second, first):
        cycle = api.post("/api/replenish")
        assert cycle.status_code == 200 and cycle.json()["published"] == 1, cycle.text
        assert api.get(f"/api/tasks/{expected}").json()["status"] == "PROCESSING"
    claimed = api.patch(f"/api/tasks/{third}", json={"priority": 9})
    assert claimed.status_code == 409
    assert claimed.json() == {
        "error": "conflict",
        "detail": f"task {third} is PROCESSING; only a PENDING task's priority can change",
    }
    assert api.get(f"/api/tasks/{third}").json()["priority"] == 6


def test_a_priority_change_of_no_task_is_a_404(api):
    answer = api.patch("/api/tasks/recMISSING00000", json={"priority": 1})
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"priority": "5"},
        {"priority": 5.5},
        {"priority": 5.0},
        {"priority": True},
        {"priority": None},
        {"priority": 1_000_001},
        {"priority": -1_000_001},
        {"priority": 10**30},
        {},
        {"priority": 5, "status": "PENDING"},
        [5],
        5,
    ],
)
def test_a_bad_body_is_a_422_and_changes_nothing(client, body):
    (record_id,) = ingest(client, [{"n": 1}], priority=2)
    answer = client.patch(f"/api/tasks/{record_id}", json=body)
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_input"), answer.text
    assert client.get(f"/api/tasks/{record_id}").json()["priority"] == 2


def test_a_body_that_is_not_json_is_a_400(client):
    (record_id,) = ingest(client, [{"n": 1}], priority=2)
    json_type = {"content-type": "application/json"}
    answer = client.patch(f"/api/tasks/{record_id}", content=b"{priority: 5", headers=json_type)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_json")


def test_an_action_route_patched_is_a_405_not_a_missing_task(client):
    answer = client.patch("/api/tasks/ingest", json={"priority": 1})
    assert (answer.status_code, answer.json()["error"]) == (405, "method_not_allowed")


def test_a_table_without_a_priority_column_answers_409_saying_so(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblMin", DEFAULT_FIELDS[:4])
    settings = bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblMin")
    with TestClient(create_app(settings)) as client:
        (record_id,) = ingest(client, [{"n": 1}], priority=2)
        feishu.reset_calls()
        answer = client.patch(f"/api/tasks/{record_id}", json={"priority": 5})
    assert answer.status_code == 409
    assert "no Priority column" in answer.json()["detail"] and "setup-bitable" in answer.json()["detail"]
    assert feishu.count("batch_update") == 0
