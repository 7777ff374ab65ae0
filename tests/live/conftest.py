"""Where the live suite runs: the strict Feishu emulator (the default, and CI), or a real Bitable.

`make test-live` sets TEST_LIVE=1; the `FEISHU_*` variables then name a real app, an **empty** table made for the
suite, and optionally a custom bot (`FEISHU_ROBOT_WEBHOOK_URL`, `FEISHU_ROBOT_SECRET`, signature on). Without
them every test skips and says which are missing. The same test functions run in both modes through `target`.
After each live test every row of the table is deleted: it was empty before the suite, so they are the suite's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import Settings
from app.store.bitable import BitableTaskStore
from app.store.chunks import chunked
from app.store.columns import setup_columns
from app.store.feishu import FeishuTable
from tests.support.modes import LIVE
from tests.support.settings import emulator_table, make_settings

NEEDED = ("FEISHU_APP_ID", "FEISHU_APP_SECRET", "FEISHU_BITABLE_APP_TOKEN", "FEISHU_BITABLE_TABLE_ID")
OPTIONAL = ("FEISHU_DOMAIN", "FEISHU_ROBOT_WEBHOOK_URL", "FEISHU_ROBOT_SECRET")
# read once at import: the root conftest clears every setting from the environment around each test
LIVE_ENV = {name: os.environ.get(name, "") for name in NEEDED + OPTIONAL}
EMULATOR_BOT, EMULATOR_BOT_SECRET = "hook-live-suite", "live-suite-secret"


@dataclass
class Target:
    """One Bitable (real or emulated) and one signed bot, as settings for the service."""

    mode: str  # "live" or "emulator"
    values: dict[str, object]
    bot_url: str
    bot_secret: str

    def settings(self, data_dir: Path, **overrides: object) -> Settings:
        return make_settings(data_dir, **(self.values | overrides))


def _live_values() -> dict[str, object]:
    values: dict[str, object] = {"store": "bitable", **{name.lower(): LIVE_ENV[name] for name in NEEDED}}
    if LIVE_ENV["FEISHU_DOMAIN"]:
        values["feishu_domain"] = LIVE_ENV["FEISHU_DOMAIN"]
    return values


async def _rows(table: FeishuTable) -> list[str]:
    record_ids, token = [], None
    while True:
        page = await table.search(field_names=["Identifier"], page_size=500, page_token=token)
        record_ids += [record_id for record_id, _ in page.records]
        if not (token := page.page_token):
            return record_ids


def _live_table(settings: Settings) -> FeishuTable:
    return BitableTaskStore.from_settings(settings).table


@pytest.fixture(scope="session")
def live_table_ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Once per live session: credentials present, the service's columns there, and the table empty."""
    missing = [name for name in NEEDED if not LIVE_ENV[name]]
    if missing:
        pytest.skip(f"the live suite needs {', '.join(missing)} (a real Bitable: see README, 'The live suite')")

    async def prepare() -> int:
        table = _live_table(make_settings(tmp_path_factory.mktemp("live"), **_live_values()))
        try:
            await setup_columns(table)
            return len(await _rows(table))
        finally:
            await table.aclose()

    rows = asyncio.run(prepare())
    if rows:
        pytest.skip(f"FEISHU_BITABLE_TABLE_ID has {rows} rows: the live suite needs an empty table of its own")


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if not LIVE:
        feishu = request.getfixturevalue("feishu")
        feishu.add_bot(EMULATOR_BOT, EMULATOR_BOT_SECRET)
        values = emulator_table(feishu)
        bot_url = f"{feishu.url}/open-apis/bot/v2/hook/{EMULATOR_BOT}"
        yield Target("emulator", values, bot_url, EMULATOR_BOT_SECRET)
        return
    request.getfixturevalue("live_table_ready")
    target = Target("live", _live_values(), LIVE_ENV["FEISHU_ROBOT_WEBHOOK_URL"], LIVE_ENV["FEISHU_ROBOT_SECRET"])
    yield target
    asyncio.run(_delete_every_row(target.settings(tmp_path / "cleanup")))


async def _delete_every_row(settings: Settings) -> None:
    table = _live_table(settings)
    try:
        for chunk in chunked(await _rows(table), 500):
            await table.batch_delete(chunk)
    finally:
        await table.aclose()


@pytest.fixture
async def store(target: Target, tmp_path: Path) -> AsyncIterator[BitableTaskStore]:
    """The contract suite's store, on the target's table (overrides the root's sqlite/bitable pair here)."""
    opened = BitableTaskStore.from_settings(target.settings(tmp_path / "data"))
    await opened.open()
    yield opened
    await opened.close()
