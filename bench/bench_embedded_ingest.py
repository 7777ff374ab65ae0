"""(d) Embedded-store ingest throughput against a bare FastAPI endpoint that only parses the same bodies.

What is measured: tasks per second through `POST /api/tasks/ingest`, end to end over loopback HTTP, for

- **ours**: the service (`uvicorn app.main:app` in a subprocess, as the Docker image runs it) on the embedded
  default: STORE=sqlite in a fresh DATA_DIR (the SQLite store with `synchronous=FULL`; the filesystem broker is
  configured but unused), LOG_LEVEL=WARNING, SCHEDULER_ENABLED=false, no API keys;
- **bare**: `bare` below, a FastAPI app served by uvicorn in another subprocess
  (`python -m uvicorn bench.bench_embedded_ingest:bare --log-level warning --no-access-log`), whose one route
  takes the same body type (`list[dict[str, Any]]`) and answers `{"received": n}`: what any FastAPI ingest
  endpoint pays (HTTP, JSON parsing, validation of the body), with no hashing, dedup, storage or response items.

The load generator is the same for both: 4 asyncio workers in this process (2 in --smoke), each with its own
`httpx.AsyncClient` (opened before the clock starts, connections kept alive), posting pre-encoded bodies of 100
distinct new payloads (~300 bytes each, ~30 KiB a request) until a fixed number of requests has been answered:
6 rounds of 200 requests per side (1 round of 6 in --smoke). Rounds are interleaved (bare, ours, bare, ours, …)
so both sides see the same machine noise; in a round both get the same bodies, every body new to the service
(every request creates 100 rows; the answers are checked). One warm-up batch per side precedes the rounds.
The pool grows by 20,000 rows a round (120,800 at the end), so ours is measured over that range of sizes.

Result "d": ratio = ours / bare in tasks per second (totals over all rounds), met when ≥ 0.6. The details also
give the per-round ratios' median and range, how busy the load generator was (its CPU seconds per wall
second: on 2 cores a saturated client would cap the bare side and flatter the ratio), and each server's CPU
time per request (user + system, all threads, from /proc): what the work costs, apart from how it overlaps.

python -m bench.bench_embedded_ingest [--smoke]
"""

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Body, FastAPI

TASKS_PER_REQUEST = 100
ROOT = Path(__file__).resolve().parents[1]

# ---- the floor: a bare endpoint that only parses the same bodies ----------------------------------------

bare = FastAPI(title="bare ingest floor")


@bare.post("/api/tasks/ingest")
async def bare_ingest(payloads: Annotated[list[dict[str, Any]], Body()]) -> dict[str, int]:
    return {"received": len(payloads)}


@bare.get("/healthz")
async def bare_health() -> dict[str, str]:
    return {"status": "ok"}


# ---- processes -------------------------------------------------------------------------------------------


@contextmanager
def bare_process(workdir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The bare app under uvicorn in its own process, lean as it gets: no access log."""
    from tests.support.processes import running_service

    bare_app = [sys.executable, "-m", "uvicorn", "bench.bench_embedded_ingest:bare", "--host", "127.0.0.1"]
    with running_service(
        {}, workdir, name="bare app", argv=[*bare_app, "--log-level", "warning", "--no-access-log"]
    ) as up:
        yield up


# ---- load ------------------------------------------------------------------------------------------------


def build_bodies(count: int, tag: str) -> list[bytes]:
    """`count` request bodies of TASKS_PER_REQUEST payloads each, every payload distinct (and new to any store)."""
    regions = ("USA", "CHN", "EUR", "ASI", "GLB")
    bodies = []
    for b in range(count):
        payloads = [
            {
                "alpha": f"ts_mean(rank(close_{b}), {i % 20 + 1}) - ts_delta(volume, {i % 7 + 1}) * {b * 1000 + i}",
                "region": regions[i % len(regions)],
                "universe": "TOP3000",
                "delay": 1,
                "decay": i % 10,
                "neutralization": "SUBINDUSTRY",
                "truncation": 0.08,
                "pasteurization": "ON",
                "settings": {"language": "FASTEXPR", "visualization": False, "test_period": "P1Y"},
                "batch": tag,
                "seq": b * TASKS_PER_REQUEST + i,
            }
            for i in range(TASKS_PER_REQUEST)
        ]
        bodies.append(json.dumps(payloads, separators=(",", ":")).encode())
    return bodies


async def drive(clients: list[httpx.AsyncClient], bodies: list[bytes], expect: bytes, on_done) -> float:
    """Post every body once, one worker per client; answer the wall seconds from first send to last answer."""
    headers = {"content-type": "application/json"}
    pending = iter(bodies)
    problems: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for body in pending:
            response = await client.post("/api/tasks/ingest", content=body, headers=headers)
            if response.status_code != 200 or expect not in response.content[:64]:
                problems.append(f"{response.status_code} {response.content[:200]!r}")
            on_done()

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    seconds = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"{len(problems)} unexpected answers, first: {problems[0]}")
    return seconds


# ---- the benchmark ---------------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    urls: dict[str, str],
    pids: dict[str, int],
    warmup: list[bytes],
    round_bodies: list[list[bytes]],
    concurrency: int,
    progress,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], list[float]]:
    """Interleaved rounds; answers wall seconds, load-generator and server CPU seconds per side, and round ratios."""
    expect = {"bare": b'"received":100', "ours": b'"created":100,'}
    seconds = {"bare": 0.0, "ours": 0.0}
    client_cpu = {"bare": 0.0, "ours": 0.0}
    server_cpu = {"bare": 0.0, "ours": 0.0}
    ratios: list[float] = []
    clients = {
        side: [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(concurrency)] for side, url in urls.items()
    }
    try:
        for side in urls:  # warm-up: connections, lazy imports, the SQLite file, caches
            await drive(clients[side], warmup, expect[side], _noop)
        for r, bodies in enumerate(round_bodies):
            rates = {}
            for side in ("bare", "ours"):
                task = progress.add_task(f"round {r + 1}/{len(round_bodies)} {side}", total=len(bodies))
                cpu, served = time.process_time(), process_cpu(pids[side])
                took = await drive(clients[side], bodies, expect[side], lambda t=task: progress.advance(t))
                client_cpu[side] += time.process_time() - cpu
                server_cpu[side] += process_cpu(pids[side]) - served
                seconds[side] += took
                rates[side] = len(bodies) * TASKS_PER_REQUEST / took
            ratios.append(rates["ours"] / rates["bare"])
            progress.console.print(
                f"round {r + 1}: bare {rates['bare']:,.0f} tasks/s, ours {rates['ours']:,.0f} tasks/s, "
                f"ratio {ratios[-1]:.2f}"
            )
    finally:
        for side_clients in clients.values():
            for client in side_clients:
                await client.aclose()
    return seconds, client_cpu, server_cpu, ratios


def main() -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.common import Result, peak_rss_mb, smoke_flag
    from tests.support.processes import running_service

    smoke = smoke_flag()
    rounds, per_round, concurrency = (1, 6, 2) if smoke else (6, 200, 4)
    console = Console(stderr=True)
    run = uuid.uuid4().hex[:8]
    warmup = build_bodies(2 * concurrency, f"{run}-warmup")
    round_bodies = [build_bodies(per_round, f"{run}-r{r}") for r in range(rounds)]
    request_bytes = statistics.mean(len(body) for body in round_bodies[0])

    workdir = Path(tempfile.mkdtemp(prefix="bench-d-"))
    env = {
        "STORE": "sqlite",
        "DATA_DIR": str(workdir / "data"),
        "LOG_LEVEL": "WARNING",
        "SCHEDULER_ENABLED": "false",
        "API_KEYS": "",
        "CELERY_BROKER_URL": "",
    }
    try:
        with (
            running_service(env, workdir) as (ours_url, ours_proc),
            bare_process(workdir) as (bare_url, bare_proc),
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            urls = {"bare": bare_url, "ours": ours_url}
            pids = {"bare": bare_proc.pid, "ours": ours_proc.pid}
            seconds, client_cpu, server_cpu, ratios = asyncio.run(
                measure(urls, pids, warmup, round_bodies, concurrency, progress)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    tasks = rounds * per_round * TASKS_PER_REQUEST
    bare_rate, ours_rate = tasks / seconds["bare"], tasks / seconds["ours"]
    ratio = ours_rate / bare_rate
    Result(
        key="d",
        what="embedded-store ingest vs a bare FastAPI endpoint parsing the same bodies (tasks/s)",
        target="≥ 0.6",
        ratio=round(ratio, 3),
        met=ratio >= 0.6,
        details={
            "ours_tasks_per_s": round(ours_rate),
            "bare_tasks_per_s": round(bare_rate),
            "round_ratio_median": round(statistics.median(ratios), 3),
            "round_ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
            "request_kib": round(request_bytes / 1024, 1),
            "tasks_per_request": TASKS_PER_REQUEST,
            "requests": f"{rounds}x{per_round} per side",
            "concurrency": concurrency,
            "pool_rows_at_end": tasks + len(warmup) * TASKS_PER_REQUEST,
            "client_cpu_per_wall_s": f"bare {client_cpu['bare'] / seconds['bare']:.2f}, "
            f"ours {client_cpu['ours'] / seconds['ours']:.2f}",
            "server_cpu_ms_per_request": f"bare {1000 * server_cpu['bare'] / (rounds * per_round):.2f}, "
            f"ours {1000 * server_cpu['ours'] / (rounds * per_round):.2f}",
            "peak_rss_mb_bench": round(peak_rss_mb()),
            "smoke": smoke,
        },
    ).emit()


def _noop() -> None:
    pass


if __name__ == "__main__":
    main()
