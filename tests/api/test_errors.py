"""Answers that used to be 500s, or hid their request id: bad tokens, a full disk, a failing store, a bug."""

import contextlib
import errno
import io
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.logs import configure_logging
from app.main import create_app
from tests.support.settings import make_settings


def test_a_page_token_of_non_ascii_digits_is_a_422(client):
    for token in ("²", "١٢", "12a", "-1", " 1"):
        response = client.get("/api/tasks", params={"page_token": token})
        assert response.status_code == 422, (token, response.text)
        assert response.json()["error"] == "invalid_input"


def test_an_unexpected_error_is_a_json_500_with_its_request_id_and_logged(tmp_path, monkeypatch):
    logged = io.StringIO()
    monkeypatch.setattr("app.main.configure_logging", lambda s: configure_logging(s, logged))
    app = create_app(make_settings(tmp_path / "data"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "unexpected error; see the service log"}
    assert response.headers["x-request-id"] == "req-500"
    (line,) = [json.loads(line) for line in logged.getvalue().splitlines() if "unhandled error" in line]
    assert line["request_id"] == "req-500" and "RuntimeError: a bug" in line["exc"] and line["level"] == "ERROR"


def test_priority_queue_with_feishu_failing_is_a_plain_json_503(bitable_client, feishu):
    bitable_client.post("/api/tasks/ingest", json=[{"n": 0}])
    feishu.add_fault("server_error", endpoint="batch_create")
    response = bitable_client.post("/api/tasks/priority-queue", json=[{"n": 0}, {"n": 1}])
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["error"] == "store_unavailable"
    assert [(item["outcome"], item["record_id"] is None) for item in body["items"]] == [
        ("duplicate", False),
        ("not_stored", True),
    ]
    assert set(body) == {"error", "detail", "items"}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m"):
    """A real filesystem that fills up: a tmpfs of a few MB (mounting needs root)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def test_a_full_disk_is_a_503_store_unavailable_and_readyz_says_so(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk / "data", store="sqlite", scheduler_enabled=False)
        with TestClient(create_app(settings)) as client:
            stored = client.post("/api/tasks/ingest", json=[{"n": n} for n in range(20)]).json()
            assert stored["created"] == 20
            fill(disk)
            urgent = client.post("/api/tasks/priority-queue", json=[{"n": 3}])
            cycle = client.post("/api/replenish")
            ready = client.get("/readyz")
    assert urgent.status_code == 503, urgent.text
    assert urgent.json()["error"] == "store_unavailable" and int(urgent.headers["Retry-After"]) >= 1
    assert urgent.json()["items"][0]["outcome"] == "duplicate"
    assert cycle.status_code == 503 and int(cycle.headers["Retry-After"]) >= 1, cycle.text
    assert cycle.json()["error"] == "store_unavailable" and cycle.json()["report"]["outcome"] == "failed"
    assert ready.status_code == 503
    assert ready.json()["checks"]["data_dir"] != "ok", ready.text
    json.dumps(ready.json())


@pytest.fixture(autouse=True)
def _our_handler_removed():
    yield
    for handler in [h for h in logging.getLogger().handlers if h.get_name() == "task-manager"]:
        logging.getLogger().removeHandler(handler)


def test_a_page_token_feishu_never_gave_is_a_422_without_a_call(bitable_client, feishu):
    feishu.reset_calls()
    for token in ("²", "a b", "x" * 513):
        response = bitable_client.get("/api/tasks", params={"page_token": token})
        assert response.status_code == 422 and response.json()["error"] == "invalid_input", response.text
    assert feishu.count("search") == 0
