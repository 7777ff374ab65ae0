"""Every benchmark script still runs: a tiny smoke run of each (the real runs are `make bench`, not tests)."""

import json
import os
import sys

import pytest

from bench.run import BENCHES
from tests.support.processes import ROOT, run_to_end

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("key", sorted(BENCHES))
def test_benchmark_smoke_run(key, rabbit_url):
    proc = run_to_end(
        [sys.executable, "-m", BENCHES[key], "--smoke"], 300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results[0]["key"] == key
    for result in results:
        assert result["ratio"] > 0 and isinstance(result["met"], bool)
