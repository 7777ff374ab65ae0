"""`doctor` on the target: healthy, then the failures it can meet without harming the table (a wrong table id, a
bad app secret, a bad bot secret). The bot test checks the assumption the signature probe rests on: Feishu checks
a custom bot's signature before it reads the message (the docs do not say which comes first)."""

import pytest

from app.doctor import Status, exit_code, run_doctor
from app.store.bitable import BitableTaskStore
from tests.support.feishu import clear_token_cache


async def checks_for(settings):
    return {check.name: check for check in await run_doctor(lambda: settings)}


async def test_doctor_passes_on_the_target(target, tmp_path):
    settings = target.settings(tmp_path / "data", api_keys="k")
    store = BitableTaskStore.from_settings(settings)
    await store.open()  # the first start: the identifier index
    await store.close()
    checks = await checks_for(settings)
    assert [c.line() for c in checks.values() if c.failed] == []
    assert exit_code(list(checks.values())) == 0
    assert sum(name.startswith("feishu.filter.") for name in checks) >= 10


async def test_doctor_names_a_wrong_table_id(target, tmp_path):
    checks = await checks_for(target.settings(tmp_path / "data", feishu_bitable_table_id="tblDoesNotExist1"))
    assert checks["feishu.token"].status is Status.OK
    assert checks["feishu.table"].failed and "FEISHU_BITABLE_TABLE_ID" in checks["feishu.table"].fix


async def test_doctor_names_a_bad_app_secret(target, tmp_path):
    clear_token_cache(target.values["feishu_app_id"])  # the SDK caches a token per app id, process-wide
    checks = await checks_for(target.settings(tmp_path / "data", feishu_app_secret="not-the-app-secret"))
    assert checks["feishu.token"].failed and "FEISHU_APP_SECRET" in checks["feishu.token"].fix


async def test_the_bot_answers_the_signature_before_the_message(target, tmp_path):
    if not (target.bot_url and target.bot_secret):
        pytest.skip("needs FEISHU_ROBOT_WEBHOOK_URL and FEISHU_ROBOT_SECRET of a bot with signature verification on")
    bot = {"feishu_robot_webhook_url": target.bot_url}
    good = await checks_for(target.settings(tmp_path / "data", feishu_robot_secret=target.bot_secret, **bot))
    assert good["bot.signature"].status is Status.OK, good["bot.signature"].line()
    bad = await checks_for(target.settings(tmp_path / "data", feishu_robot_secret="not-the-bot-secret", **bot))
    assert bad["bot.signature"].failed and "FEISHU_ROBOT_SECRET" in bad["bot.signature"].fix
