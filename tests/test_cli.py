"""The command line run as a process: reindex, replenish, stats, setup-bitable, prune, tasks (show, priority), the
console script."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from app.models import StatusChange, TaskStatus
from tests.support.cli import run_cli
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.processes import ROOT, free_port, stop, wait_until


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
    from tests.support.tasks import add_all, new_task

    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    await add_all(store, [new_task(n) for n in range(4)])
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
    created = "created: Status, Payload, CreatedAt, Priority, ClaimedAt, Result, Error, FinishedAt"
    assert created in " ".join(result.stdout.split())
    assert "Attempts (type 1, needs 2)" in " ".join(result.stdout.split())
    feishu.insert_rows(APP_TOKEN, "tblNEW", [{"Status": "FAILED", "CreatedAt": 1, "Priority": 2.5}])
    again = run_cli("setup-bitable", env=bitable_env(feishu, tmp_path, "tblNEW"), cwd=tmp_path)
    assert "every column is already there" in again.stdout
    assert feishu.count("fields_create") == 8


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


def test_prune_offers_and_takes_only_finished_statuses(tmp_path):
    usage = run_cli("prune", "--help", env={"DATA_DIR": str(tmp_path), "COLUMNS": "200"}, cwd=tmp_path)
    assert usage.returncode == 0
    offered = " ".join(usage.stdout.split())
    assert "SUCCESS" in offered and "FAILED" in offered and "CANCELLED" in offered
    assert "PENDING" not in offered and "PROCESSING" not in offered, offered
    assert "--dry-run" in offered
    result = run_cli("prune", "--status", "PENDING", "--older-than", "1", env={"DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2 and "PENDING" in result.stderr  # refused as a usage error, before any work


def test_prune_dry_run_counts_and_deletes_nothing(feishu, tmp_path):
    old = 1_600_000_000_000
    rows = [{"Identifier": f"{n:064x}", "Status": "FAILED", "CreatedAt": old} for n in range(7)]
    feishu.insert_rows(APP_TOKEN, TABLE_ID, rows)
    env = bitable_env(feishu, tmp_path)
    result = run_cli("prune", "--status", "FAILED", "--older-than", "30", "--dry-run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would remove 7 FAILED tasks" in " ".join(result.stdout.split())
    assert feishu.count("batch_delete") == 0 and len(feishu.rows(APP_TOKEN, TABLE_ID)) == 7
    assert "0 identifiers" not in run_cli("reindex", env=env, cwd=tmp_path).stdout


async def test_prune_dry_run_on_the_embedded_store(tmp_path):
    from app.store.sqlite import SqliteTaskStore
    from tests.support.tasks import add_all, new_task

    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    stored = await add_all(store, [new_task(n) for n in range(3)])
    await store.update([StatusChange(s.record_id, TaskStatus.SUCCESS) for s in stored])
    await store.close()
    env = {"DATA_DIR": str(tmp_path / "data")}
    dry = run_cli("prune", "--status", "SUCCESS", "--older-than", "0", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would remove 3 SUCCESS tasks" in " ".join(dry.stdout.split())
    real = run_cli("prune", "--status", "SUCCESS", "--older-than", "0", env=env, cwd=tmp_path)
    assert "removed 3 SUCCESS tasks" in " ".join(real.stdout.split())


async def test_tasks_show_lists_n_tasks_or_one_in_full(tmp_path):
    from app.store.sqlite import SqliteTaskStore
    from tests.support.tasks import add_all, new_task

    store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
    await store.open()
    stored = await add_all(store, [new_task(n, priority=n) for n in range(5)])
    await store.close()
    env = {"DATA_DIR": str(tmp_path / "data")}
    listing = run_cli("tasks", "show", "3", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "first 3 of 5 tasks" in listing.stdout
    assert sum(s.record_id in listing.stdout for s in stored) == 3
    one = run_cli("tasks", "show", stored[4].record_id, env=env, cwd=tmp_path)
    shown = json.loads(one.stdout)  # JSON, for jq and for people alike
    assert (shown["record_id"], shown["status"], shown["payload"]) == (stored[4].record_id, "PENDING", {"n": 4})
    assert set(shown) == {
        "record_id",
        "identifier",
        "status",
        "payload",
        "priority",
        "created_at",
        "claimed_at",
        "attempts",
        "result",
        "error",
        "finished_at",
    }
    missing = run_cli("tasks", "show", "recNOPE", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "not_found" in missing.stdout
    for target in ("²", "١٢"):  # str.isdigit() takes them, int() or a record id does not: a clear refusal, no traceback
        odd = run_cli("tasks", "show", target, env=env, cwd=tmp_path)
        assert odd.returncode == 2, odd.stdout + odd.stderr
        assert "neither a number of tasks nor a record id" in " ".join(odd.stdout.split())
        assert "Traceback" not in odd.stdout + odd.stderr


@pytest.mark.parametrize("kind", ["sqlite", "bitable"])
async def test_tasks_priority_changes_a_pending_tasks_priority_and_the_next_cycle_picks_by_it(kind, tmp_path, request):
    from app.store.sqlite import SqliteTaskStore
    from tests.support.stores import open_store
    from tests.support.tasks import add_all, new_task

    if kind == "sqlite":
        env = {"DATA_DIR": str(tmp_path / "data")}
        store = SqliteTaskStore(tmp_path / "data" / "tasks.db")
        await store.open()
    else:
        feishu = request.getfixturevalue("feishu")
        env = bitable_env(feishu, tmp_path)
        store = await open_store(feishu, tmp_path / "data")
    first, second = (s.record_id for s in await add_all(store, [new_task(1, priority=3), new_task(2, priority=3)]))
    await store.close()
    env["REPLENISH_BATCH_SIZE"] = "1"

    changed = run_cli("tasks", "priority", second, "-7", env=env, cwd=tmp_path)  # a negative number, not an option
    assert changed.returncode == 0, changed.stdout + changed.stderr
    shown = json.loads(changed.stdout)
    assert (shown["record_id"], shown["status"], shown["priority"]) == (second, "PENDING", -7)
    assert run_cli("tasks", "priority", second, "4", env=env, cwd=tmp_path).returncode == 0
    cycle = run_cli("replenish", env=env, cwd=tmp_path)
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    assert json.loads(run_cli("tasks", "show", second, env=env, cwd=tmp_path).stdout)["status"] == "PROCESSING"
    assert json.loads(run_cli("tasks", "show", first, env=env, cwd=tmp_path).stdout)["status"] == "PENDING"

    claimed = run_cli("tasks", "priority", second, "9", env=env, cwd=tmp_path)
    assert claimed.returncode == 1 and "conflict" in claimed.stdout
    assert "is PROCESSING; only a PENDING task's priority can change" in " ".join(claimed.stdout.split())
    missing = run_cli("tasks", "priority", "recNOPE", "9", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "not_found" in missing.stdout
    for args in ((first, "1000001"), (first, "2.5"), ("a/b", "1")):  # refused before any work, as usage errors
        refused = run_cli("tasks", "priority", *args, env=env, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
    assert json.loads(run_cli("tasks", "show", first, env=env, cwd=tmp_path).stdout)["priority"] == 3


@pytest.mark.broker
def test_stats_names_a_missing_queue_once_and_still_counts_the_pool(tmp_path, rabbit_url, queue_name):
    env = {"DATA_DIR": str(tmp_path / "data"), "CELERY_BROKER_URL": rabbit_url, "CELERY_QUEUE": queue_name}
    result = run_cli("stats", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "PENDING" in out and "queue_missing" in out
    assert out.count(queue_name) == 1, out
    assert "ready messages" not in out
    cycle = run_cli("replenish", env=env, cwd=tmp_path)
    assert cycle.returncode == 1 and "queue_missing" in cycle.stdout


def test_the_project_ships_the_task_manager_console_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"task-manager": "app.cli:main"}
    assert project["build-system"]["build-backend"]
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["app", "app.*"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-e \.", makefile), "make must install the project (and its script) into .venv"
    script = Path(sys.executable).parent / "task-manager"
    assert script.exists(), f"{script}: run make (it installs the project into .venv)"
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert usage.returncode == 0 and "replenish" in usage.stdout and "prune" in usage.stdout
    assert run_cli("--help", env={}, cwd=ROOT).returncode == 0  # python -m app still works


def test_serve_takes_host_and_port_from_dotenv(tmp_path):
    port = free_port()
    (tmp_path / ".env").write_text(f"HOST=127.0.0.1\nPORT={port}\nDATA_DIR=data\nSCHEDULER_ENABLED=false\n")
    script = Path(sys.executable).parent / "task-manager"
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([str(script), "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, f"task-manager serve on PORT={port} from .env")
    finally:
        stop(proc)
    assert (tmp_path / "data" / "tasks.db").exists()  # DATA_DIR from the same .env


def test_readme_examples_use_the_console_script():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    inline = re.findall(r"`([^`\n]+)`", readme)
    stale = [line for line in [*"".join(blocks).splitlines(), *inline] if "python -m app" in line]
    assert stale == [], stale
    assert "task-manager" in "".join(blocks)
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^HOST=", example, re.M) and re.search(r"^PORT=", example, re.M)


# ---- bulk retry and cancel (issue 15) ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "bitable"])
def pool_env(request, tmp_path, monkeypatch) -> dict[str, str]:
    """The environment of a CLI run on each store (the embedded default, or Bitable on the emulator), set here too."""
    if request.param == "sqlite":
        env = {"DATA_DIR": str(tmp_path / "data")}
    else:
        env = bitable_env(request.getfixturevalue("feishu"), tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def seeded() -> list[str]:
    """Six tasks through the service's own store: priorities 0-5; 0-3 FAILED, 4-5 PENDING."""
    from app.config import load_settings
    from app.store import build_store
    from tests.support.tasks import add_all, new_task

    store = build_store(load_settings())
    await store.open()
    try:
        stored = await add_all(store, [new_task(n, priority=n) for n in range(6)])
        await store.update([StatusChange(s.record_id, TaskStatus.FAILED, attempts=2) for s in stored[:4]])
    finally:
        await store.close()
    return [s.record_id for s in stored]


async def statuses_of(record_ids: list[str]) -> list[str]:
    from app.config import load_settings
    from app.store import build_store

    store = build_store(load_settings())
    await store.open()
    try:
        found = await store.get(record_ids)
    finally:
        await store.close()
    return [found[r].status.value for r in record_ids]


async def test_retry_failed_counts_asks_and_retries_only_on_yes(pool_env, tmp_path):
    record_ids = await seeded()
    dry = run_cli("tasks", "retry-failed", "--priority-min", "2", "--dry-run", env=pool_env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "2 FAILED tasks match" in dry.stdout and "?" not in dry.stdout
    declined = run_cli("tasks", "retry-failed", "--priority-min", "2", env=pool_env, cwd=tmp_path, answer="n\n")
    assert declined.returncode == 1 and "Retry them?" in declined.stdout
    assert await statuses_of(record_ids) == ["FAILED"] * 4 + ["PENDING"] * 2
    agreed = run_cli("tasks", "retry-failed", "--priority-min", "2", env=pool_env, cwd=tmp_path, answer="y\n")
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert "retry: 2 of 2 matching FAILED tasks changed" in " ".join(agreed.stdout.split())
    assert await statuses_of(record_ids) == ["FAILED"] * 2 + ["PENDING"] * 4


async def test_cancel_pending_with_yes_asks_nothing(pool_env, tmp_path):
    record_ids = await seeded()
    done = run_cli("tasks", "cancel-pending", "--priority-max", "4", "--yes", env=pool_env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "?" not in done.stdout and "cancel: 1 of 1 matching PENDING" in " ".join(done.stdout.split())
    assert await statuses_of(record_ids) == ["FAILED"] * 4 + ["CANCELLED", "PENDING"]


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--created-after", "2026-12-01T08:00:00", "time zone"),
        ("--created-before", "soon", "ISO 8601"),
        ("--identifier", "xyz", "64 lowercase hex"),
        ("--priority-min", "nan", "finite"),
    ],
)
def test_a_bad_bulk_filter_stops_before_touching_the_pool(tmp_path, option, value, says):
    result = run_cli("tasks", "cancel-pending", option, value, "--yes", env={"DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "tasks.db").exists()
