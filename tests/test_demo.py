"""`python -m app demo` run as a new user would: the whole loop in real processes, then nothing left running."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import run_to_end

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args: str, tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_to_end(
        [sys.executable, "-m", "app", "demo", *args],
        timeout,
        cwd=ROOT,
        # TMPDIR: the demo's DATA_DIR lands in pytest's tmp_path, which pytest cleans up
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
    )


def summary_value(summary: str, label: str) -> str:
    match = re.search(rf"^\W*{label}\W+([\w.,]+)\W*$", summary, re.MULTILINE)
    assert match, f"no {label!r} row in the summary:\n{summary}"
    return match.group(1).replace(",", "")


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of running processes whose command line or environment holds one of the needles."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(needle in cmdline or needle in environ for needle in needles):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_the_demo_runs_the_whole_loop_and_leaves_nothing_running(tmp_path):
    result = run_demo("--tasks", "60", "--workers", "2", tmp_path=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    data_dir = Path(re.search(r"^DATA_DIR (\S+)$", result.stdout, re.MULTILINE).group(1))
    port = re.search(r"^service http://127\.0\.0\.1:(\d+)", result.stdout, re.MULTILINE).group(1)
    assert data_dir.parent == tmp_path and (data_dir / "tasks.db").exists()
    assert {"service.log", "worker-0.log", "worker-1.log"} <= {path.name for path in data_dir.iterdir()}

    summary = result.stdout.partition("demo summary")[2]
    success, failed = int(summary_value(summary, "SUCCESS")), int(summary_value(summary, "FAILED"))
    assert int(summary_value(summary, "tasks")) == 60
    assert success + failed == 60
    assert float(summary_value(summary, "tasks per second")) > 0
    assert summary_value(summary, "all accounted for") == "yes"

    assert processes_mentioning(str(data_dir), f"--port {port} ") == []


def test_the_demo_refuses_zero_tasks(tmp_path):
    result = run_demo("--tasks", "0", tmp_path=tmp_path, timeout=60)

    assert result.returncode != 0
    assert "Invalid value for '--tasks'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any DATA_DIR was made
