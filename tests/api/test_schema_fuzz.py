"""Schemathesis fuzzes every operation of the service's own OpenAPI, in-process, on the embedded default: no
answer is a 5xx, and every 4xx is the contract's `{"error", "detail"}` JSON (docs/api.md, "Errors")."""

from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from app.main import create_app
from app.service import TaskService
from tests.support.settings import make_settings

# `@schema.parametrize()` needs the schema when tests are collected, so it is read from an app that is not started.
# (`schemathesis.pytest.from_fixture` would read it from the fixture, but schemathesis 4.32 sets `Node._nodeid`,
# which pytest 9.2 no longer has.) The fixture checks that the started app serves this same document.
schema = schemathesis.openapi.from_dict(create_app().openapi())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DATA_DIR for the module, so later operations meet what earlier ones stored (listed, pushed, claimed)."""
    return tmp_path_factory.mktemp("fuzz") / "data"


@pytest.fixture
def fuzz_app(data_dir: Path) -> FastAPI:
    """An app per operation over the shared DATA_DIR; loading its schema over ASGI starts its lifespan, which
    schemathesis keeps running until the test's teardown."""
    app = create_app(make_settings(data_dir, store="sqlite"))
    served = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert served.raw_schema == schema.raw_schema
    assert isinstance(app.state.service, TaskService)
    return app


@schema.parametrize()
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one running app serves all of an operation's cases
)
def test_no_server_error_and_every_client_error_has_the_error_shape(case: schemathesis.Case, fuzz_app: FastAPI):
    response = case.call(app=fuzz_app)
    case.validate_response(response, checks=[not_a_server_error])
    if 400 <= response.status_code < 500:
        repro = f"{response.status_code} for {case.as_curl_command()}:\n{response.text[:500]}"
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), repro
        body = response.json()
        assert isinstance(body, dict) and {"error", "detail"} <= body.keys(), repro
