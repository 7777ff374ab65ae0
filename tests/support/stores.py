"""Store fixtures: `sqlite_store`, `bitable_store` (on the emulator), and `store`, which runs a test on both; and
`open_store`, a Bitable store on the emulator with the settings a test gives."""

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.store.bitable import BitableTaskStore
from app.store.sqlite import SqliteTaskStore
from tests.support.settings import bitable_settings

__all__ = ["bitable_store", "open_store", "sqlite_store", "store"]


async def open_store(
    emu, data_dir: Path, *, clock: Callable[[], float] = time.monotonic, **overrides
) -> BitableTaskStore:
    """A Bitable store on the emulator's table, opened, these settings over `bitable_settings`; the caller closes it."""
    store = BitableTaskStore.from_settings(bitable_settings(emu, data_dir, **overrides), clock=clock)
    await store.open()
    return store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def bitable_store(feishu, tmp_path: Path) -> AsyncIterator[BitableTaskStore]:
    """Probes and counts call Feishu every time here; tests/store/test_windows.py covers their windows."""
    store = await open_store(feishu, tmp_path / "data", ready_check_seconds=0, stats_cache_seconds=0)
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "bitable"])
def store(request: pytest.FixtureRequest):
    """The contract suite runs every test against both adapters."""
    return request.getfixturevalue(f"{request.param}_store")
