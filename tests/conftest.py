"""Root fixtures: every test runs in a clean environment; the shared fixtures come from tests/support/."""

import os
from pathlib import Path

import pytest

from app.config import Settings
from tests.support.brokers import make_publisher, queue_name, rabbit_url, redis_url
from tests.support.browser import browser
from tests.support.feishu import feishu
from tests.support.services import (
    clock,
    cycle,
    dispatcher,
    journal,
    make_services,
    notifier,
    publisher,
    service,
    services,
)
from tests.support.stores import bitable_store, sqlite_store, store

# fixtures, imported so pytest finds them here (no pytest_plugins)
__all__ = [
    "bitable_store",
    "browser",
    "clock",
    "cycle",
    "dispatcher",
    "feishu",
    "journal",
    "make_publisher",
    "make_services",
    "notifier",
    "publisher",
    "queue_name",
    "rabbit_url",
    "redis_url",
    "service",
    "services",
    "sqlite_store",
    "store",
]

_OUR_SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer .env or exported setting leaks into a test."""
    for name in list(os.environ):
        if name.upper() in _OUR_SETTINGS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
