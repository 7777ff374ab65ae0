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
