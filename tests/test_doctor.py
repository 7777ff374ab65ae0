"""`python -m app doctor` against the Feishu emulator over HTTP and a real RabbitMQ: healthy, and each broken part
named with its fix. The start-up checks are the same code: a broken table stops the app with the same line."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.doctor import StartupRefused, Status, exit_code, run_doctor
from app.doctor.feishu import feishu_checks
from app.main import create_app
from app.store.bitable import BitableTaskStore
from tests.feishu.emulator import DEFAULT_FIELDS
from tests.support.brokers import declare_workers_queue
from tests.support.cli import run_cli
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.settings import bitable_settings, make_settings

BOT = "hook-doctor"
BOT_SECRET = "bot-secret"


def healthy(feishu, tmp_path: Path, rabbit_url: str, queue: str, **overrides) -> Settings:
    """The emulator's table, a signed bot, and the workers' queue on RabbitMQ with x-max-priority 10."""
    feishu.add_bot(BOT, BOT_SECRET)
    values = {
        "feishu_robot_webhook_url": f"{feishu.url}/open-apis/bot/v2/hook/{BOT}",
        "feishu_robot_secret": BOT_SECRET,
        "celery_broker_url": rabbit_url,
        "celery_queue": queue,
        "api_keys": "k1",
    }
    return bitable_settings(feishu, tmp_path / "data", **(values | overrides))


async def build_index(settings: Settings) -> None:
    """What the service's first start does: the identifier index, rebuilt from the table."""
    store = BitableTaskStore.from_settings(settings)
    await store.open()
    await store.close()


async def doctor(settings: Settings, **options) -> dict[str, object]:
    return {check.name: check for check in await run_doctor(lambda: settings, **options)}


@pytest.fixture
def workers_queue(rabbit_url, queue_name) -> str:
    declare_workers_queue(rabbit_url, queue_name, max_priority=10)
    return queue_name


@pytest.mark.broker
async def test_a_healthy_deployment_passes_every_check_and_posts_nothing(feishu, tmp_path, rabbit_url, workers_queue):
    settings = healthy(feishu, tmp_path, rabbit_url, workers_queue)
    await build_index(settings)
    checks = await doctor(settings)
    assert [c.line() for c in checks.values() if c.status in (Status.FAIL, Status.WARN)] == []
    assert exit_code(list(checks.values())) == 0
    filters = {name for name in checks if name.startswith("feishu.filter.")}
    assert {
        "pick",
        "count",
        "count_scan",
        "newest_failed",
        "lease_recovery",
        "prune",
        "index_count",
        "identifier_lookup",
        "filtered_page",
    } <= {name.removeprefix("feishu.filter.") for name in filters}
    assert any(name.startswith("feishu.filter.index_part_") for name in filters)
    assert checks["queue.max_priority"].detail == "x-max-priority 10"
    assert checks["bot.signature"].status is Status.OK
    assert feishu.bot_messages(BOT) == []  # the signature probe posts nothing


async def test_every_filter_search_asks_for_one_row(feishu, tmp_path):
    rows = [{"Identifier": f"{n:064x}", "Status": "PENDING", "CreatedAt": 1_700_000_000_000} for n in range(3)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    feishu.reset_calls()
    checks = await doctor(bitable_settings(feishu, tmp_path / "data"))
    searches = [call for call in feishu.calls if call.endpoint == "search"]
    assert len(searches) == len([name for name in checks if name.startswith("feishu.filter.")])
    assert all(call.code == 0 and call.n_records <= 1 for call in searches)
    assert checks["feishu.filter.pick"].detail == "accepted (3 rows match)"


async def test_a_missing_column_is_named_with_the_features_it_turns_off(feishu, tmp_path):
    fields = [spec for spec in DEFAULT_FIELDS if spec[0] not in ("Payload", "ClaimedAt")]
    feishu.add_table(APP_TOKEN, "tblSHORT", fields)
    checks = await doctor(bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblSHORT"))
    payload, claimed = checks["feishu.column.Payload"], checks["feishu.column.ClaimedAt"]
    assert payload.status is Status.FAIL and "missing" in payload.detail and "setup-bitable" in payload.fix
    assert claimed.status is Status.WARN and "lease recovery is off" in claimed.detail
    assert checks["feishu.filters"].status is Status.SKIP


async def test_the_result_columns_are_checked_and_a_table_without_them_is_only_warned(feishu, tmp_path):
    checks = await doctor(bitable_settings(feishu, tmp_path / "data"))
    assert [checks[f"feishu.column.{name}"].line() for name in ("Result", "Error", "FinishedAt")] == [
        "ok    feishu.column.Result: text",
        "ok    feishu.column.Error: text",
        "ok    feishu.column.FinishedAt: date",
    ]
    older = [spec for spec in DEFAULT_FIELDS if spec[0] not in ("Result", "Error", "FinishedAt")]
    feishu.add_table(APP_TOKEN, "tblOLDER", [*older, ("Error", 2)])
    checks = await doctor(bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblOLDER"))
    result, error, finished = (checks[f"feishu.column.{n}"] for n in ("Result", "Error", "FinishedAt"))
    assert {result.status, error.status, finished.status} == {Status.WARN}
    assert "missing: workers' results are not kept" in result.detail and "setup-bitable" in result.fix
    assert error.detail.startswith("of type number, needs text: workers' error texts are not kept")
    assert "finish times are not kept" in finished.detail
    assert not [c for c in checks.values() if c.status is Status.FAIL and c.name.startswith("feishu.")]


async def test_a_wrong_table_id_is_named(feishu, tmp_path):
    checks = await doctor(bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblNOPE"))
    assert checks["feishu.token"].status is Status.OK
    table = checks["feishu.table"]
    assert table.status is Status.FAIL and "FEISHU_BITABLE_TABLE_ID" in table.fix


async def test_a_used_up_monthly_quota_is_named(feishu, tmp_path):
    feishu.monthly_quota = 0
    checks = await doctor(bitable_settings(feishu, tmp_path / "data"))
    assert checks["feishu.quota"].status is Status.FAIL and "monthly API quota" in checks["feishu.quota"].fix
    assert feishu.count("fields_list") == 1  # a used-up quota is not retried


async def test_feishu_out_of_reach_is_named(feishu, tmp_path):
    settings = bitable_settings(feishu, tmp_path / "data", feishu_retry_attempts=2)
    feishu.stop()
    checks = await doctor(settings)
    assert checks["feishu.token"].status is Status.FAIL and "FEISHU_DOMAIN" in checks["feishu.token"].fix


async def test_a_bad_app_secret_is_named(feishu, tmp_path):
    checks = await doctor(bitable_settings(feishu, tmp_path / "data", feishu_app_secret="wrong"))
    token = checks["feishu.token"]
    assert token.status is Status.FAIL and "FEISHU_APP_SECRET" in token.fix
    assert checks["feishu.table"].status is Status.SKIP
    assert "wrong" not in token.line()


@pytest.mark.broker
async def test_a_bad_bot_secret_is_named_without_posting(feishu, tmp_path, rabbit_url, workers_queue):
    settings = healthy(feishu, tmp_path, rabbit_url, workers_queue, feishu_robot_secret="not-the-secret")
    checks = await doctor(settings, send_test_card=True)
    signature = checks["bot.signature"]
    assert signature.status is Status.FAIL and "FEISHU_ROBOT_SECRET" in signature.fix
    assert checks["bot.test_card"].status is Status.SKIP
    assert feishu.bot_messages(BOT) == []


async def test_a_signed_bot_without_a_secret_asks_for_one(feishu, tmp_path):
    feishu.add_bot(BOT, BOT_SECRET)
    url = f"{feishu.url}/open-apis/bot/v2/hook/{BOT}"
    checks = await doctor(bitable_settings(feishu, tmp_path / "data", feishu_robot_webhook_url=url))
    assert checks["bot.signature"].status is Status.FAIL
    assert "set FEISHU_ROBOT_SECRET" in checks["bot.signature"].fix


@pytest.mark.broker
async def test_the_test_card_is_posted_only_when_asked(feishu, tmp_path, rabbit_url, workers_queue):
    checks = await doctor(healthy(feishu, tmp_path, rabbit_url, workers_queue), send_test_card=True)
    assert checks["bot.test_card"].status is Status.OK
    (card,) = feishu.bot_messages(BOT)
    assert card["card"]["header"]["title"]["content"] == "Task Manager doctor: test card"


@pytest.mark.broker
async def test_a_missing_queue_is_named(feishu, tmp_path, rabbit_url, queue_name):
    checks = await doctor(healthy(feishu, tmp_path, rabbit_url, queue_name))
    queue = checks["queue"]
    assert queue.status is Status.FAIL and "start the workers" in queue.fix
    assert checks["broker"].status is Status.OK


@pytest.mark.broker
async def test_a_missing_queue_the_service_may_create_is_a_warning(feishu, tmp_path, rabbit_url, queue_name):
    checks = await doctor(healthy(feishu, tmp_path, rabbit_url, queue_name, celery_queue_max_priority=10))
    assert checks["queue"].status is Status.WARN
    assert exit_code(list(checks.values())) == 0


@pytest.mark.broker
async def test_a_priority_pair_outside_the_queues_maximum_is_named(feishu, tmp_path, rabbit_url, queue_name):
    declare_workers_queue(rabbit_url, queue_name, max_priority=5)
    settings = healthy(feishu, tmp_path, rabbit_url, queue_name, celery_default_priority=6, celery_high_priority=9)
    checks = await doctor(settings)
    assert checks["queue.max_priority"].detail == "x-max-priority 5"
    pair = checks["queue.priorities"]
    assert pair.status is Status.FAIL and "CELERY_DEFAULT_PRIORITY below 5" in pair.fix


@pytest.mark.broker
async def test_a_high_priority_above_the_maximum_is_capped_with_a_warning(feishu, tmp_path, rabbit_url, queue_name):
    declare_workers_queue(rabbit_url, queue_name, max_priority=5)
    checks = await doctor(healthy(feishu, tmp_path, rabbit_url, queue_name))  # 1 and 9
    assert checks["queue.priorities"].status is Status.WARN
    assert "CELERY_HIGH_PRIORITY to 5" in checks["queue.priorities"].fix


@pytest.mark.broker
async def test_a_queue_without_a_maximum_ignores_priorities(feishu, tmp_path, rabbit_url, queue_name):
    declare_workers_queue(rabbit_url, queue_name, max_priority=None)
    checks = await doctor(healthy(feishu, tmp_path, rabbit_url, queue_name, celery_queue_max_priority=10))
    assert checks["queue.max_priority"].status is Status.WARN
    assert "no x-max-priority" in checks["queue.max_priority"].detail


async def test_an_unreachable_broker_is_named(tmp_path):
    from tests.support.processes import free_port

    url = f"amqp://guest:secret-pw@127.0.0.1:{free_port()}//"
    checks = await doctor(make_settings(tmp_path / "data", celery_broker_url=url, broker_timeout_seconds=1))
    assert checks["broker"].status is Status.FAIL and "CELERY_BROKER_URL" in checks["broker"].fix
    assert "secret-pw" not in checks["broker"].line()


async def test_a_filter_feishu_refuses_fails_its_own_line(feishu, tmp_path):
    class StoreWithABadSearch(BitableTaskStore):
        def filter_shapes(self):
            bad = {
                "conjunction": "and",
                "conditions": [{"field_name": "Priority", "operator": "contains", "value": ["1"]}],
            }
            return super().filter_shapes() | {"bad": {"filter_": bad}}

    store = StoreWithABadSearch.from_settings(bitable_settings(feishu, tmp_path / "data"))
    try:
        checks = {c.name: c for c in await feishu_checks(store)}
    finally:
        await store.table.aclose()
    assert checks["feishu.filter.bad"].status is Status.FAIL
    assert checks["feishu.filter.pick"].status is Status.OK


async def test_an_index_that_misses_rows_of_the_table_is_named(feishu, tmp_path):
    settings = bitable_settings(feishu, tmp_path / "data")
    await build_index(settings)
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": f"{n:064x}", "Status": "SUCCESS"} for n in range(3)])
    checks = await doctor(settings)
    index = checks["index"]
    assert index.status is Status.FAIL and "3 rows" in index.detail and "reindex" in index.fix


async def test_a_data_dir_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    checks = await doctor(make_settings(tmp_path / "taken"))
    assert checks["data_dir"].status is Status.FAIL


def test_a_bad_setting_is_a_failed_line_not_a_crash(tmp_path):
    result = run_cli("doctor", "--json", env={"FEISHU_TIMEOUT_SECONDS": "-1"}, cwd=tmp_path)
    assert result.returncode == 1
    (check,) = json.loads(result.stdout)["checks"]
    assert check["name"] == "settings" and check["status"] == "FAIL" and "FEISHU_TIMEOUT_SECONDS" in check["detail"]


def test_the_command_prints_a_line_per_check_and_exits_non_zero_on_a_failure(feishu, tmp_path):
    env = {
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": "wrong",
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": feishu.url,
        "DATA_DIR": str(tmp_path / "data"),
    }
    result = run_cli("doctor", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  feishu.token" in result.stdout and "fix: copy FEISHU_APP_ID" in result.stdout
    assert "ok    data_dir" in result.stdout
    healthy_env = env | {"FEISHU_APP_SECRET": feishu.app_secret, "API_KEYS": "k"}
    result = run_cli("doctor", "--json", env=healthy_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_start_up_refuses_a_broken_table_with_the_doctors_line(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblSHORT", [spec for spec in DEFAULT_FIELDS if spec[0] != "Payload"])
    settings = bitable_settings(feishu, tmp_path / "data", feishu_bitable_table_id="tblSHORT")
    with pytest.raises(StartupRefused) as refused, TestClient(create_app(settings)):
        pass
    assert "FAIL  feishu.column.Payload" in str(refused.value) and "setup-bitable" in str(refused.value)


@pytest.mark.broker
def test_start_up_only_warns_about_a_missing_queue_and_probes_nothing(feishu, tmp_path, rabbit_url, queue_name):
    settings = healthy(feishu, tmp_path, rabbit_url, queue_name)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert feishu.bot_messages(BOT) == []
    assert feishu.count("bot") == 0  # no signature probe at start-up


@pytest.mark.broker
async def test_redis_an_empty_queue_and_its_priority_scheme(tmp_path, redis_url, queue_name):
    checks = await doctor(make_settings(tmp_path / "data", celery_broker_url=redis_url, celery_queue=queue_name))
    assert checks["broker"].status is Status.OK
    assert checks["queue"].status is Status.OK and "no messages" in checks["queue"].detail
    assert checks["queue.priorities"].detail.startswith("default 6, high 0")
