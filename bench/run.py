"""Run every benchmark, each in its own process, and record the results in bench/RESULTS.md.

python -m bench.run            # the full suite (make bench)
python -m bench.run --smoke    # tiny sizes: proves the scripts still work (the test suite runs this)
python -m bench.run --only a,c
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {
    "a": "bench.bench_coalescing",
    "b": "bench.bench_ingest_rate",
    "c": "bench.bench_replenish",
    "d": "bench.bench_embedded_ingest",
    "e": "bench.bench_reindex",
    "f": "bench.bench_dedup_growth",
    "g": "bench.bench_ingest_latency",
    "h": "bench.bench_request_limits",
    "i": "bench.bench_feishu_budget",  # also answers j and k
}
ANSWERED_BY = {"j": "i", "k": "i"}  # results a script answers beside its own key


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def run_one(module: str, smoke: bool, console: Console) -> list[dict]:
    command = [sys.executable, "-m", module, *(["--smoke"] if smoke else [])]
    console.print(f"[bold]{module}[/bold] …")
    proc = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True, timeout=1800
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{module} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return [json.loads(line) for line in lines if '"key"' in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    asked = [ANSWERED_BY.get(key, key) for key in args.only.split(",")]
    unknown = sorted(set(asked) - set(BENCHES))
    if unknown:  # before any script runs: a late KeyError would throw away the results measured so far
        parser.error(f"no benchmark {', '.join(unknown)}; the keys are {', '.join([*BENCHES, *ANSWERED_BY])}")
    console = Console()
    modules = dict.fromkeys(BENCHES[key] for key in asked)  # once each, in the order asked
    results = [result for module in modules for result in run_one(module, args.smoke, console)]
    table = Table("#", "what", "target", "measured", "met", "details")
    for r in results:
        details = ", ".join(f"{k}={v}" for k, v in r["details"].items())
        table.add_row(r["key"], r["what"], r["target"], f"{r['ratio']:.2f}", "yes" if r["met"] else "NO", details)
    console.print(table)
    if args.smoke or args.no_record:
        return
    rows = "\n".join(
        f"| {r['key']} | {r['what']} | {r['target']} | {r['ratio']:.2f} | {'yes' if r['met'] else '**no**'} | "
        + ", ".join(f"{k}={v}" for k, v in r["details"].items())
        + " |"
        for r in results
    )
    record = (
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n- machine: {machine()}\n"
        f"- command: `python -m bench.run --only {args.only}`"
        " (Feishu emulator at 100 ms per call, RabbitMQ on 127.0.0.1)\n\n"
        "| # | what | target | measured | met | details |\n|---|---|---|---|---|---|\n" + rows + "\n"
    )
    with (ROOT / "bench" / "RESULTS.md").open("a") as out:
        out.write(record)
    console.print("recorded in bench/RESULTS.md")


if __name__ == "__main__":
    main()
