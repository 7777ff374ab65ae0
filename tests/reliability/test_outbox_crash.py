"""kill -9 the service while Feishu refuses every status write, restart it on the same DATA_DIR: no report lost.

The service is a real `python -m app serve` process against the Feishu emulator and the embedded broker. Its tasks
are claimed by a cycle; 20 workers then report them one a request while every `batch_update` answers HTTP 500, so
each report is answered from the outbox alone and the flusher keeps failing. SIGKILL leaves every report in
outbox-<table>.db; Feishu comes back, the service restarts, and every task must end as it was reported.
"""

import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.feishu.emulator import FeishuEmulator
from tests.reliability.test_crash import kill9, service_env
from tests.support.feishu import APP_ID, APP_SECRET, APP_TOKEN, TABLE_ID, clear_token_cache
from tests.support.modes import size
from tests.support.processes import running_service, wait_until

WORKERS = 20


@pytest.fixture
def emulator(seed: int):
    clear_token_cache(APP_ID)
    emu = FeishuEmulator(app_id=APP_ID, app_secret=APP_SECRET, seed=seed).start()
    emu.add_table(APP_TOKEN, TABLE_ID)
    emu.read_conflicts = True
    try:
        yield emu
    finally:
        emu.stop()
        clear_token_cache(APP_ID)


def waiting_in_outbox(data_dir: Path) -> int:
    """Reports the outbox holds, read-only beside a running (or killed) service."""
    db = sqlite3.connect(f"file:{data_dir / f'outbox-{TABLE_ID}.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM entries").fetchone()[0]
    finally:
        db.close()


def statuses(emu: FeishuEmulator) -> dict[str, str]:
    return {record_id: fields.get("Status") for record_id, fields in emu.rows(APP_TOKEN, TABLE_ID).items()}


def report_one(url: str, status: str, item: str | dict) -> httpx.Response:
    return httpx.post(f"{url}/api/tasks/update-status", json={status: [item]}, timeout=30)


def test_kill9_with_reports_accepted_while_feishu_refuses_writes_then_restart_applies_every_one(
    emulator: FeishuEmulator, tmp_path: Path, seed: int
):
    count = size(200, 2_000)
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    env = service_env(emulator, data_dir) | {"STATUS_FLUSH_SECONDS": "0.5", "REPLENISH_BATCH_SIZE": str(count)}
    with running_service(env, tmp_path, name="first") as (url, proc):
        ingested = httpx.post(f"{url}/api/tasks/ingest", json=[{"n": n} for n in range(count)], timeout=60).json()
        record_ids = [item["record_id"] for item in ingested["items"]]
        cycle = httpx.post(f"{url}/api/replenish", timeout=60).json()
        assert (cycle["outcome"], cycle["published"]) == ("published", count), cycle
        assert set(statuses(emulator).values()) == {"PROCESSING"}

        emulator.add_fault("server_error", endpoint="batch_update")  # Feishu refuses every status write from here
        wanted = {record_id: rng.choice(["SUCCESS", "FAILED"]) for record_id in record_ids}

        def report(record_id: str) -> httpx.Response:
            status = wanted[record_id]
            item = {"record_id": record_id, "result": {"n": record_id}} if status == "SUCCESS" else record_id
            return report_one(url, status, item)

        with ThreadPoolExecutor(WORKERS) as pool:
            answers = list(pool.map(report, record_ids))
        assert all(a.status_code == 200 and a.json()["not_found"] == [] for a in answers), answers[0].text
        wait_until(lambda: emulator.count("batch_update", code=1255001) >= 2, 60, "the flusher's writes to be refused")
        assert waiting_in_outbox(data_dir) == count
        kill9(proc)
    assert set(statuses(emulator).values()) == {"PROCESSING"}, "a report was written while Feishu refused writes"
    assert waiting_in_outbox(data_dir) == count

    emulator.clear_faults()
    emulator.reset_calls()
    with running_service(env, tmp_path, name="restarted") as (url, _):
        wait_until(lambda: statuses(emulator) == wanted, 60, "every report accepted before the kill to be written")
        wait_until(lambda: waiting_in_outbox(data_dir) == 0, 30, "the outbox to empty")
        sample = rng.sample(record_ids, 5)
        for record_id in sample:
            assert httpx.get(f"{url}/api/tasks/{record_id}", timeout=10).json()["status"] == wanted[record_id]
    updates = [c.n_records for c in emulator.calls if c.endpoint == "batch_update" and c.code == 0]
    print(f"\n[outbox crash] reports={count} workers={WORKERS} batch_update rows after restart={updates}")
    assert sum(updates) >= count and len(updates) <= -(-count // 1_000) + 1
