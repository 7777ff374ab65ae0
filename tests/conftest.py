import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from app.store.bitable import BitableTaskStore
from app.store.sqlite import SqliteTaskStore

pytest_plugins = ["tests.feishu.fixtures", "tests.brokers"]

_OUR_SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer .env or exported setting leaks into a test."""
    for name in list(os.environ):
        if name.upper() in _OUR_SETTINGS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, **overrides)


def bitable_settings(emu, data_dir: Path, **overrides) -> Settings:
    values = {
        "store": "bitable",
        "feishu_app_id": emu.app_id,
        "feishu_app_secret": emu.app_secret,
        "feishu_bitable_app_token": "bascnTEST",
        "feishu_bitable_table_id": "tblTEST",
        "feishu_domain": emu.url,
        "feishu_timeout_seconds": 5,
        "feishu_retry_base_seconds": 0.01,
        "feishu_write_linger_ms": 5,
    }
    return make_settings(data_dir, **(values | overrides))


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def bitable_store(feishu, tmp_path: Path) -> AsyncIterator[BitableTaskStore]:
    store = BitableTaskStore.from_settings(bitable_settings(feishu, tmp_path / "data"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "bitable"])
def store(request: pytest.FixtureRequest):
    """The contract suite runs every test against both adapters."""
    return request.getfixturevalue(f"{request.param}_store")
