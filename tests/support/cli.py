"""Run `python -m app` as a child process, the way an operator runs the command line."""

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT


def run_cli(*args: str, env: dict[str, str], cwd: Path, answer: str | None = None) -> subprocess.CompletedProcess:
    """`answer` is typed at the command's prompts (a line each); without it the command reads no input."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        input=answer if answer is not None else "",
        timeout=60,
    )
