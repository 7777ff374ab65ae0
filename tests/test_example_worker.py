"""examples/worker.py reports what its task returned as `result`, and its exception as `error`, to a real service.

The task runs eagerly (`apply`, with the record id as its task id) in a process of its own, as a worker would run
it, without a broker in between: what is tested is the report it sends and what the service keeps of it.
"""

import json
import os
import sys

import httpx
import pytest

from tests.support.processes import ROOT, run_to_end, service_process

pytestmark = pytest.mark.slow

_RUN_ONCE = """
import json, sys
from examples.worker import simulate_task
print(json.dumps(simulate_task.apply(args=[json.loads(sys.argv[2])], task_id=sys.argv[1]).get()))
"""


def run_task(record_id: str, payload: dict, url: str, tmp_path, fail_rate: str) -> object:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(tmp_path / "worker-data"),
        "TASK_MANAGER_URL": url,
        "WORKER_FAIL_RATE": fail_rate,
        "WORKER_SLEEP_SECONDS": "0",
    }
    done = run_to_end([sys.executable, "-c", _RUN_ONCE, record_id, json.dumps(payload)], 60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_the_example_worker_reports_its_result_on_success_and_its_exception_on_failure(tmp_path):
    with service_process({"DATA_DIR": str(tmp_path / "data")}, tmp_path) as url:
        payloads = [{"alpha": "rank(close)"}, {"alpha": "rank(open)"}]
        items = httpx.post(f"{url}/api/tasks/ingest", json=payloads, timeout=30).json()["items"]
        good, bad = (item["record_id"] for item in items)
        returned = run_task(good, payloads[0], url, tmp_path, fail_rate="0")
        assert run_task(bad, payloads[1], url, tmp_path, fail_rate="1") is None
        succeeded = httpx.get(f"{url}/api/tasks/{good}", timeout=10).json()
        failed = httpx.get(f"{url}/api/tasks/{bad}", timeout=10).json()
    assert (succeeded["status"], succeeded["result"], succeeded["error"]) == ("SUCCESS", returned, None)
    assert returned["fibonacci"] == fibonacci(returned["n"])
    assert (failed["status"], failed["result"]) == ("FAILED", None)
    assert failed["error"].startswith("SimulatedFailure: fibonacci(")
    assert succeeded["finished_at"] and failed["finished_at"]
