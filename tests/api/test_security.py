"""API keys: every /api route needs one when API_KEYS is set; probes, metrics and docs stay open."""

import logging

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.settings import make_settings

KEYS = "key-one-0123456789,key-two-9876543210"


@pytest.fixture
def guarded(tmp_path):
    with TestClient(create_app(make_settings(tmp_path / "data", api_keys=KEYS))) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/tasks/ingest"),
        ("post", "/api/tasks/priority-queue"),
        ("post", "/api/tasks/update-status"),
        ("get", "/api/tasks"),
        ("get", "/api/tasks/recX"),
        ("post", "/api/tasks/recX/retry"),
        ("delete", "/api/tasks/recX"),
        ("post", "/api/replenish"),
        ("get", "/api/stats"),
    ],
)
def test_every_api_route_needs_a_key(guarded, method, path):
    response = getattr(guarded, method)(path)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    wrong = getattr(guarded, method)(path, headers={"X-API-Key": "key-one-0123456780"})
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "key-one-0123456789"}, {"Authorization": "Bearer key-two-9876543210"}],
)
def test_either_header_with_any_configured_key_is_accepted(guarded, headers):
    response = guarded.post("/api/tasks/ingest", json=[{"n": 1}], headers=headers)
    assert response.status_code == 200
    assert guarded.get("/api/stats", headers=headers).json()["counts"]["PENDING"] == 1


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
def test_probes_metrics_and_docs_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


def test_no_keys_means_open_with_one_warning_at_start(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        assert client.post("/api/tasks/ingest", json=[{"n": 1}]).status_code == 200
    warnings = [r for r in caplog.records if "API_KEYS is empty" in r.getMessage()]
    assert len(warnings) == 1


def test_every_response_carries_a_request_id_and_keeps_a_sane_given_one(guarded):
    assert len(guarded.get("/healthz").headers["x-request-id"]) == 16
    assert guarded.get("/healthz", headers={"X-Request-ID": "scraper-42"}).headers["x-request-id"] == "scraper-42"
    assert guarded.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"


def test_the_openapi_document_declares_both_ways_to_authenticate(guarded):
    schemes = guarded.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
