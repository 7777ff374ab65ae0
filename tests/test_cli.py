import json
import os
import subprocess
import sys
from pathlib import Path

from tests.feishu.fixtures import APP_TOKEN, TABLE_ID

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reindex_rebuilds_the_index_from_the_table(feishu, tmp_path):
    identifiers = [f"{n:064x}" for n in range(7)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, [{"Identifier": i, "Status": "SUCCESS"} for i in identifiers])
    env = {
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": feishu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": feishu.url,
        "DATA_DIR": str(tmp_path / "data"),
    }
    result = run_cli("reindex", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "7 identifiers" in result.stdout
    assert (tmp_path / "data" / f"index-{TABLE_ID}.db").exists()
    assert feishu.app_secret not in result.stdout + result.stderr


def test_a_bad_setting_stops_the_cli_naming_it(tmp_path):
    result = run_cli("reindex", env={"FEISHU_TIMEOUT_SECONDS": "-1"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "FEISHU_TIMEOUT_SECONDS" in result.stdout + result.stderr


async def test_replenish_and_stats_run_the_same_cycle_from_the_command_line(tmp_path):
    from app.store.sqlite import SqliteTaskStore
    from tests.store.test_contract import new_task

    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    await store.add([new_task(n) for n in range(4)])
    await store.close()
    env = {"DATA_DIR": str(tmp_path / "data")}

    dry = run_cli("replenish", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "dry_run" in dry.stdout and "claimed" in dry.stdout

    real = run_cli("replenish", env=env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert "published" in real.stdout

    stats = run_cli("stats", env=env, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in stats.stdout.splitlines() if "│" in line
    }
    assert lines["PROCESSING"] == "4" and lines["PENDING"] == "0"
    assert "4 ready messages" in stats.stdout


def bitable_env(feishu, tmp_path, table_id: str = TABLE_ID) -> dict[str, str]:
    return {
        "FEISHU_APP_ID": feishu.app_id,
        "FEISHU_APP_SECRET": feishu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": table_id,
        "FEISHU_DOMAIN": feishu.url,
        "DATA_DIR": str(tmp_path / "data"),
    }


def test_setup_bitable_creates_the_missing_columns_and_leaves_the_rest(feishu, tmp_path):
    feishu.add_table(APP_TOKEN, "tblNEW", [("Identifier", 1), ("Notes", 1), ("Attempts", 1)])
    result = run_cli("setup-bitable", env=bitable_env(feishu, tmp_path, "tblNEW"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout  # Attempts exists with the wrong type: said, not changed
    assert "created: Status, Payload, CreatedAt, Priority, ClaimedAt" in " ".join(result.stdout.split())
    assert "Attempts (type 1, needs 2)" in " ".join(result.stdout.split())
    feishu.insert_rows(APP_TOKEN, "tblNEW", [{"Status": "FAILED", "CreatedAt": 1, "Priority": 2.5}])
    again = run_cli("setup-bitable", env=bitable_env(feishu, tmp_path, "tblNEW"), cwd=tmp_path)
    assert "every column is already there" in again.stdout
    assert feishu.count("fields_create") == 5


def test_setup_bitable_on_the_embedded_store_says_what_it_needs(tmp_path):
    result = run_cli("setup-bitable", env={"DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2 and "FEISHU_APP_ID" in result.stdout


def test_prune_deletes_old_finished_rows_in_batches_and_dedup_still_knows_them(feishu, tmp_path):
    env = bitable_env(feishu, tmp_path)
    old, recent = 1_600_000_000_000, 4_000_000_000_000
    rows = [
        {"Identifier": f"{n:064x}", "Status": "SUCCESS", "CreatedAt": old, "Payload": json.dumps({"n": n})}
        for n in range(1_203)
    ]
    rows += [{"Identifier": f"{n:064x}", "Status": "SUCCESS", "CreatedAt": recent} for n in range(2_000, 2_003)]
    rows += [{"Identifier": f"{n:064x}", "Status": "PENDING", "CreatedAt": old} for n in range(3_000, 3_002)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    result = run_cli("prune", "--status", "SUCCESS", "--older-than", "30", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed 1,203 SUCCESS tasks" in result.stdout
    deletes = [c for c in feishu.calls if c.endpoint == "batch_delete"]
    assert [c.n_records for c in deletes] == [500, 500, 203]
    assert len(feishu.rows(APP_TOKEN, TABLE_ID)) == 5
    reindexed = run_cli("reindex", env=env, cwd=tmp_path)
    assert "1,208 identifiers" in reindexed.stdout  # the pruned ones stay in the index


def test_prune_refuses_unfinished_statuses(tmp_path):
    result = run_cli("prune", "--status", "PENDING", "--older-than", "1", env={"DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 1 and "only finished tasks" in result.stdout


async def test_tasks_show_lists_n_tasks_or_one_in_full(tmp_path):
    from app.store.sqlite import SqliteTaskStore
    from tests.store.test_contract import new_task

    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    stored = await store.add([new_task(n, priority=n) for n in range(5)])
    await store.close()
    env = {"DATA_DIR": str(tmp_path / "data")}
    listing = run_cli("tasks", "show", "3", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "5 tasks" in listing.stdout
    assert sum(s.record_id in listing.stdout for s in stored) == 3
    one = run_cli("tasks", "show", stored[4].record_id, env=env, cwd=tmp_path)
    assert "payload: {'n': 4}" in one.stdout and "status: PENDING" in one.stdout
    missing = run_cli("tasks", "show", "recNOPE", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "not_found" in missing.stdout
