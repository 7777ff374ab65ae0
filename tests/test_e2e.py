"""The whole loop for real: ingest → replenish → the example worker in its own process → every task SUCCESS."""

import json

import httpx
import pytest

from tests.support.brokers import declare_workers_queue
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.processes import free_port, running_service, service_process, wait_until, worker_process

pytestmark = pytest.mark.slow


def run_loop(url: str, env: dict[str, str], workdir, queue: str, tasks: int) -> dict:
    payloads = [{"alpha": f"rank(close_{n})", "region": "USA"} for n in range(tasks)]
    assert httpx.post(f"{url}/api/tasks/ingest", json=payloads, timeout=30).json()["created"] == tasks
    report = httpx.post(f"{url}/api/replenish", timeout=60).json()
    assert (report["outcome"], report["published"]) == ("published", tasks), report
    worker_env = {**env, "TASK_MANAGER_URL": url, "WORKER_FAIL_RATE": "0", "WORKER_SLEEP_SECONDS": "0"}
    with worker_process(worker_env, workdir, queue) as worker_log:

        def all_done() -> dict | None:
            counts = httpx.get(f"{url}/api/stats", timeout=10).json()["counts"]
            return counts if counts["SUCCESS"] == tasks else None

        try:
            return wait_until(all_done, 90, f"{tasks} tasks to reach SUCCESS")
        except AssertionError:
            print(worker_log.read_text()[-4000:])
            raise


def test_the_loop_on_the_embedded_default(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data")}
    with service_process(env, tmp_path) as url:
        counts = run_loop(url, env, tmp_path, "celery", 40)
        tasks = httpx.get(f"{url}/api/tasks", params={"limit": 100}, timeout=10).json()["items"]
    assert counts == {"PENDING": 0, "PROCESSING": 0, "SUCCESS": 40, "FAILED": 0, "CANCELLED": 0}
    assert all(task["result"]["fibonacci"] >= 6765 and task["finished_at"] for task in tasks)  # the worker's own


def test_the_example_worker_reads_api_keys_from_dotenv_as_the_service_does(tmp_path):
    """A newcomer's set-up: API_KEYS only in .env, the service and the worker started beside it."""
    port, key = free_port(), "dotenv-only-key-5f2c"
    (tmp_path / ".env").write_text(
        f"API_KEYS={key}\nDATA_DIR=data\nSCHEDULER_ENABLED=false\n"
        f"PORT={port}\nWORKER_FAIL_RATE=0\nWORKER_SLEEP_SECONDS=0\n"  # no TASK_MANAGER_URL: the worker finds PORT
    )
    with running_service({}, tmp_path, port=port) as (url, _):
        auth = {"X-API-Key": key}
        assert httpx.post(f"{url}/api/tasks/ingest", json=[{"n": 1}], timeout=10).status_code == 401
        payloads = [{"n": n} for n in range(5)]
        assert httpx.post(f"{url}/api/tasks/ingest", json=payloads, headers=auth, timeout=30).json()["created"] == 5
        assert httpx.post(f"{url}/api/replenish", headers=auth, timeout=60).json()["published"] == 5
        with worker_process({}, tmp_path, "celery") as worker_log:

            def all_done() -> bool:
                counts = httpx.get(f"{url}/api/stats", headers=auth, timeout=10).json()["counts"]
                return counts["SUCCESS"] == 5

            try:
                wait_until(all_done, 60, "the worker's five reports to land")
            except AssertionError:
                print(worker_log.read_text()[-4000:])
                raise
    assert "401" not in worker_log.read_text()


@pytest.mark.broker
def test_the_loop_on_rabbitmq_and_the_feishu_emulator(tmp_path, feishu, rabbit_url, queue_name):
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": feishu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": feishu.url,
        "CELERY_BROKER_URL": rabbit_url,
        "CELERY_QUEUE": queue_name,
        "CELERY_QUEUE_MAX_PRIORITY": "10",
    }
    with service_process(env, tmp_path) as url:
        run_loop(url, env, tmp_path, queue_name, 60)
    rows = feishu.rows(APP_TOKEN, TABLE_ID).values()
    assert len(rows) == 60
    assert {row["Status"] for row in rows} == {"SUCCESS"}
    assert {row["Attempts"] for row in rows} == {1}
    assert all(json.loads(row["Result"])["fibonacci"] >= 6765 and row["FinishedAt"] for row in rows)


@pytest.mark.broker
def test_the_loop_on_rabbitmq_and_the_embedded_store(tmp_path, rabbit_url, queue_name):
    env = {"DATA_DIR": str(tmp_path / "data"), "CELERY_BROKER_URL": rabbit_url, "CELERY_QUEUE": queue_name}
    declare_workers_queue(rabbit_url, queue_name, max_priority=10)  # the workers' app declared it earlier
    with service_process(env, tmp_path) as url:
        counts = run_loop(url, env, tmp_path, queue_name, 40)
    assert counts["SUCCESS"] == 40 and counts["PROCESSING"] == 0
