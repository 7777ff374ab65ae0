"""API fixtures: a TestClient on the embedded store (`client`) and on the emulated Bitable (`bitable_client`)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.support.settings import bitable_settings, make_settings


@pytest.fixture
def client(tmp_path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "data", store="sqlite"))) as test_client:
        yield test_client


@pytest.fixture
def bitable_client(feishu, tmp_path) -> Iterator[TestClient]:
    with TestClient(create_app(bitable_settings(feishu, tmp_path / "data", feishu_retry_attempts=3))) as test_client:
        yield test_client
