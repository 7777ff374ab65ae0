"""The Feishu emulator as a fixture (`feishu`, imported into tests/conftest.py), its table, and SDK helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from app.store.feishu import TokenManager  # through the edge: it imports lark_oapi without its ~11k services
from tests.feishu.emulator import FeishuEmulator

if TYPE_CHECKING:
    import lark_oapi as lark

__all__ = ["APP_ID", "APP_SECRET", "APP_TOKEN", "TABLE_ID", "clear_token_cache", "feishu", "lark_client"]

APP_ID = "cli_test"
APP_SECRET = "test-secret"
APP_TOKEN = "bascnTEST"
TABLE_ID = "tblTEST"


def clear_token_cache(app_id: str = APP_ID) -> None:
    """Forget the SDK's process-wide tenant token, so the next call fetches a fresh one."""
    key = f"self_tenant_token:{app_id}"
    store = getattr(TokenManager.cache, "cache", None)
    if isinstance(store, dict):
        store.pop(key, None)
    else:
        # a custom ICache has only get/set: an entry that expired at the epoch reads as absent
        TokenManager.cache.set(key, "", 0)


def lark_client(emu: FeishuEmulator, timeout: float = 5) -> lark.Client:
    import lark_oapi as lark  # the whole SDK, every service, only where a test drives the emulator with it

    return lark.Client.builder().app_id(emu.app_id).app_secret(emu.app_secret).domain(emu.url).timeout(timeout).build()


@pytest.fixture
def feishu() -> Iterator[FeishuEmulator]:
    clear_token_cache(APP_ID)
    emu = FeishuEmulator(app_id=APP_ID, app_secret=APP_SECRET, latency=0.0).start()
    try:
        emu.add_table(APP_TOKEN, TABLE_ID)
        yield emu
    finally:
        emu.stop()
        clear_token_cache(APP_ID)
