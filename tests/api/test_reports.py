"""Workers' reports with results and errors: POST /api/tasks/update-status items, their 422s, and GET returning them."""

import json
import re
from datetime import datetime

import pytest

from app.identity import MAX_PAYLOAD_CHARS
from app.models import MAX_ERROR_CHARS
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.processes import wait_until


def ingest(client, count: int) -> list[str]:
    body = client.post("/api/tasks/ingest", json=[{"n": n} for n in range(count)]).json()
    return [item["record_id"] for item in body["items"]]


def report(client, body):
    return client.post("/api/tasks/update-status", json=body)


def task(client, record_id: str) -> dict:
    answer = client.get(f"/api/tasks/{record_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_items_with_results_and_errors_mix_with_plain_record_ids(client):
    a, b, c = ingest(client, 3)
    answer = report(
        client,
        {
            "SUCCESS": [a, {"record_id": b, "result": {"rows": 12, "path": "s3://x/y"}}],
            "FAILED": [{"record_id": c, "error": "ValueError: no data"}],
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"updated": {"SUCCESS": 2, "FAILED": 1}, "not_found": []}
    first, second, third = (task(client, r) for r in (a, b, c))
    assert (first["status"], first["result"], first["error"]) == ("SUCCESS", None, None)
    assert (second["result"], second["error"]) == ({"rows": 12, "path": "s3://x/y"}, None)
    assert (third["status"], third["result"], third["error"]) == ("FAILED", None, "ValueError: no data")
    finished = {datetime.fromisoformat(t["finished_at"]) for t in (first, second, third)}
    assert len(finished) == 1  # one report, one moment: set on SUCCESS and FAILED alike
    listed = {t["record_id"]: t for t in client.get("/api/tasks").json()["items"]}
    assert listed[b]["result"] == second["result"] and listed[c]["error"] == "ValueError: no data"


def test_an_unknown_record_id_in_an_item_comes_back_in_not_found(client):
    (a,) = ingest(client, 1)
    body = {"SUCCESS": [{"record_id": "recUNKNOWN000000", "result": {"a": 1}}, {"record_id": a, "result": {}}]}
    assert report(client, body).json() == {"updated": {"SUCCESS": 1}, "not_found": ["recUNKNOWN000000"]}
    assert task(client, a)["result"] == {}


def test_pending_and_cancelled_take_results_and_errors_but_set_no_finish_time(client):
    a, b = ingest(client, 2)
    body = {"PENDING": [{"record_id": a, "error": "429 from upstream: giving it back"}], "CANCELLED": [b]}
    assert report(client, body).status_code == 200
    given_back = task(client, a)
    assert (given_back["status"], given_back["error"], given_back["finished_at"]) == (
        "PENDING",
        "429 from upstream: giving it back",
        None,
    )


def test_a_retry_keeps_the_last_attempts_result_error_and_finish_time_until_the_next_report(client):
    (a,) = ingest(client, 1)
    report(client, {"FAILED": [{"record_id": a, "result": {"partial": 3}, "error": "Timeout: 30 s"}]})
    failed = task(client, a)
    retried = client.post(f"/api/tasks/{a}/retry").json()
    assert (retried["status"], retried["result"], retried["error"]) == ("PENDING", {"partial": 3}, "Timeout: 30 s")
    assert retried["finished_at"] == failed["finished_at"] is not None
    report(client, {"SUCCESS": [a]})  # a plain record id carries nothing: the last result and error stay
    done = task(client, a)
    assert (done["status"], done["result"], done["error"]) == ("SUCCESS", {"partial": 3}, "Timeout: 30 s")
    assert datetime.fromisoformat(done["finished_at"]) >= datetime.fromisoformat(failed["finished_at"])
    report(client, {"SUCCESS": [{"record_id": a, "result": {"rows": 1}, "error": ""}]})  # "": no error given
    assert (task(client, a)["result"], task(client, a)["error"]) == ({"rows": 1}, "Timeout: 30 s")


def test_a_long_error_is_cut_in_its_middle_and_marked_and_the_status_lands(client):
    (a,) = ingest(client, 1)
    text = "RuntimeError: first line\n" + "x" * 10_000 + "\nValueError: the last line"
    assert report(client, {"FAILED": [{"record_id": a, "error": text}]}).status_code == 200
    stored = task(client, a)
    assert stored["status"] == "FAILED" and len(stored["error"]) <= MAX_ERROR_CHARS
    assert stored["error"].startswith("RuntimeError: first line\n")
    assert stored["error"].endswith("\nValueError: the last line")
    mark = re.search(r"\n\[… ([0-9,]+) characters cut …\]\n", stored["error"])
    assert mark and int(mark[1].replace(",", "")) == len(text) - (len(stored["error"]) - len(mark[0]))


def test_an_error_of_exactly_the_limit_is_kept_whole(client):
    (a,) = ingest(client, 1)
    text = "E" * MAX_ERROR_CHARS
    assert report(client, {"FAILED": [{"record_id": a, "error": text}]}).status_code == 200
    assert task(client, a)["error"] == text


def test_a_result_of_exactly_the_limit_is_accepted(client):
    (a,) = ingest(client, 1)
    result = {"big": "x" * (MAX_PAYLOAD_CHARS - len('{"big":""}'))}
    assert report(client, {"SUCCESS": [{"record_id": a, "result": result}]}).status_code == 200
    assert task(client, a)["result"] == result


TOO_LARGE = {"big": "x" * MAX_PAYLOAD_CHARS}


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"record_id": "REC", "result": [1, 2]}, ["body", "FAILED", 1, "report", "result"]),
        ({"record_id": "REC", "result": "done"}, ["body", "FAILED", 1, "report", "result"]),
        ({"record_id": "REC", "error": 500}, ["body", "FAILED", 1, "report", "error"]),
        ({"record_id": "REC", "error": {"type": "ValueError"}}, ["body", "FAILED", 1, "report", "error"]),
        ({"record_id": "REC", "output": {}}, ["body", "FAILED", 1, "report", "output"]),
        ({"record_id": "bad id", "result": {}}, ["body", "FAILED", 1, "report", "record_id"]),
        ({"result": {"a": 1}}, ["body", "FAILED", 1, "report", "record_id"]),
        ("bad id", ["body", "FAILED", 1, "record_id"]),
        (42, ["body", "FAILED", 1]),
        ([], ["body", "FAILED", 1]),
    ],
)
def test_a_malformed_item_is_422_naming_it_once_and_nothing_is_written(client, item, where):
    a, b = ingest(client, 2)
    item = json.loads(json.dumps(item).replace('"REC"', json.dumps(b)))
    answer = report(client, {"SUCCESS": [a], "FAILED": [a + "x", item]})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid_input"
    assert [problem["loc"] for problem in body["detail"]] == [where]  # one problem, not one per shape it could be
    assert task(client, a)["status"] == task(client, b)["status"] == "PENDING"


@pytest.mark.parametrize(
    ("result", "says"),
    [
        (TOO_LARGE, "result is 100,010 characters of canonical JSON; the limit is 100,000"),
        ("NaN", "result is not representable as JSON"),
    ],
)
def test_a_result_too_large_or_not_json_is_422_naming_the_item_and_nothing_is_written(client, result, says):
    a, b = ingest(client, 2)
    result_json = '{"x": NaN}' if result == "NaN" else json.dumps(result)
    content = f'{{"SUCCESS": ["{a}", {{"record_id": "{b}", "result": {result_json}}}]}}'
    answer = client.post(
        "/api/tasks/update-status", content=content.encode(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_input"
    assert answer.json()["detail"].startswith(f"SUCCESS item 1 ({b}): {says}")
    assert task(client, a)["status"] == "PENDING"


def test_an_error_with_a_lone_surrogate_is_422_not_a_500(client):
    (a,) = ingest(client, 1)
    content = f'{{"FAILED": [{{"record_id": "{a}", "error": "bad \\ud800 text"}}]}}'
    answer = client.post(
        "/api/tasks/update-status", content=content.encode(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(f"FAILED item 0 ({a}): error is not representable")
    assert task(client, a)["status"] == "PENDING"


def test_results_and_errors_reach_the_bitable_row_and_come_back_from_get(bitable_client, feishu):
    a, b = ingest(bitable_client, 2)
    body = {"SUCCESS": [{"record_id": a, "result": {"rows": 12}}], "FAILED": [{"record_id": b, "error": "boom"}]}
    assert report(bitable_client, body).json() == {"updated": {"SUCCESS": 1, "FAILED": 1}, "not_found": []}
    first, second = task(bitable_client, a), task(bitable_client, b)
    assert (first["status"], first["result"], second["status"], second["error"]) == (
        "SUCCESS",
        {"rows": 12},
        "FAILED",
        "boom",
    )
    assert first["finished_at"] is not None and first["finished_at"] == second["finished_at"]

    def landed() -> bool:
        rows = feishu.rows(APP_TOKEN, TABLE_ID)
        return rows[a].get("Result") == '{"rows":12}' and rows[b].get("Error") == "boom"

    wait_until(landed, 10, "the reports to reach the table")  # at once today; within the flush once it is batched
