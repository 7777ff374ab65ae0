"""(i, j, k) The Feishu budget: every call a deployment spends, counted on the emulator's call log.

The service runs as the image runs it (`python -m app serve`, a subprocess) on the Bitable store, pointed at the
emulator in this process (50 ms a call, as the issue measured "today"), with RabbitMQ on 127.0.0.1 and the
scheduler off (cycles are run through `POST /api/replenish`). Start-up's own calls (the doctor's checks, the
schema, the index) are left out: counting starts at the first request of a scene.

Scenes, one after another on one service:

- **life of N tasks** (N = 1,000, then 10,000 on a fresh service and table): 10 ingest requests of N/10 payloads,
  sent one after another (one scraper); cycles (`REPLENISH_BATCH_SIZE` = 1,000, threshold above the queue's
  depth) until nothing is PENDING; then one report per task from 20 concurrent workers, each
  `{"SUCCESS": [{"record_id": …, "result": {…}}]}` with one task, as Celery workers report, until every row
  of the table reads SUCCESS (the workers run in a process of their own, each with its connection open, as a
  Celery worker keeps its client). Floor: the writes a batch cannot avoid, one `batch_create`, one claim and one
  report `batch_update` per 1,000 tasks.
- **report latency**: each report's answer time in the life of 1,000, inside the service (from its request line
  in the service's log, at the default LOG_LEVEL=INFO: from the request reaching the app to its answer sent),
  and at the client; the client's floor is the same 20 workers sending as many `GET /healthz` right after, since
  on 2 shared cores the load generator's own CPU (~3 ms a request) is most of what a client waits.
- **a busy minute of probes and stats**: 120 `GET /readyz` (one every 0.5 s) and 40 `GET /api/stats` (one
  every 1.5 s) over 60 s, with the default READY_CHECK_SECONDS and STATS_CACHE_SECONDS.
- **an idle hour**, compressed 60×: READY_CHECK_SECONDS and STATS_CACHE_SECONDS divided by 60, a probe every
  10/60 s and a stats read every 30/60 s for 60 s; plus one cycle that finds nothing to do, counted at a
  quarter (one cycle per 4 hours). The idle day is 24 of those.

Results: "i" the life of 1,000 tasks in calls (target ≤ 20), "j" the p99 report answer in ms (≤ 50), "k" the busy
minute in calls (≤ 5). Details give calls by endpoint, the write floor, the life of 10,000, the idle hour and day.

python -m bench.bench_feishu_budget [--smoke]
"""

import asyncio
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console

from bench.common import RABBIT_URL, Result, emulator, smoke_flag
from tests.feishu.emulator import FeishuEmulator
from tests.support.brokers import declare_workers_queue, delete_rabbit_queue
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.processes import running_service, wait_until

LATENCY = 0.05
ANSWER_TIME = re.compile(r"POST /api/tasks/update-status 200 ([0-9.]+)ms")
WORKERS = 20
console = Console(stderr=True)


def bitable_calls(emu: FeishuEmulator) -> Counter:
    """Calls by endpoint since the last reset; the token endpoint is counted apart (one per two hours)."""
    return Counter(call.endpoint for call in emu.calls)


def spent(calls: Counter) -> int:
    return sum(n for endpoint, n in calls.items() if "token" not in endpoint)


def service_env(emu: FeishuEmulator, data_dir: Path, queue: str, **extra: str) -> dict[str, str]:
    return {
        "STORE": "bitable",
        "FEISHU_APP_ID": emu.app_id,
        "FEISHU_APP_SECRET": emu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": emu.url,
        "FEISHU_RETRY_BASE_SECONDS": "0.05",
        "DATA_DIR": str(data_dir),
        "CELERY_BROKER_URL": RABBIT_URL,
        "CELERY_QUEUE": queue,
        "SCHEDULER_ENABLED": "false",
        "REPLENISH_BATCH_SIZE": "1000",
        "REPLENISH_THRESHOLD": str(10**9),
        "LOG_LEVEL": "INFO",  # the default: each request's line gives its answer time inside the service
        "LOG_FORMAT": "text",
        **extra,
    }


@contextmanager
def service(emu: FeishuEmulator, workdir: Path, **extra: str) -> Iterator[tuple[str, Path]]:
    queue = f"tm-budget-{uuid.uuid4().hex[:8]}"
    declare_workers_queue(RABBIT_URL, queue, max_priority=10)
    data_dir = workdir / f"data-{queue}"
    data_dir.mkdir()
    try:
        with running_service(service_env(emu, data_dir, queue, **extra), workdir, name=queue) as (url, _):
            yield url, workdir / f"service-{queue}.log"
    finally:
        delete_rabbit_queue(RABBIT_URL, queue)


def statuses(emu: FeishuEmulator) -> Counter:
    return Counter(str(fields.get("Status")) for fields in emu.rows(APP_TOKEN, TABLE_ID).values())


async def life(emu: FeishuEmulator, url: str, log: Path, tasks: int) -> dict:
    """Ingest, cycles, reports; answers calls by endpoint and the report latencies."""
    run = uuid.uuid4().hex[:6]
    per_request = tasks // 10
    emu.reset_calls()
    record_ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for r in range(10):
            body = [{"alpha": f"rank(close_{run}_{r}_{n})", "n": n} for n in range(per_request)]
            answer = await client.post("/api/tasks/ingest", json=body)
            answer.raise_for_status()
            record_ids += [item["record_id"] for item in answer.json()["items"]]
        cycles = 0
        while True:
            report = (await client.post("/api/replenish")).json()
            cycles += 1
            if report["outcome"] != "published":
                break
            if not report.get("pending_left"):
                break
        client_side = await asyncio.to_thread(report_from_workers, url, record_ids)
    await asyncio.to_thread(
        wait_until, lambda: statuses(emu).get("SUCCESS", 0) >= tasks, 300, "every report to reach the table", 0.1
    )
    calls = bitable_calls(emu)
    inside = [float(ms) / 1000 for ms in ANSWER_TIME.findall(await asyncio.to_thread(log.read_text))]
    return {"calls": calls, "inside": inside, "cycles": cycles, **client_side}


def report_from_workers(url: str, record_ids: list[str]) -> dict[str, list[float]]:
    """The workers run in a process of their own: in this one they would share the GIL with the emulator."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as ids:
        json.dump(record_ids, ids)
        ids.flush()
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_feishu_budget", "--workers", url, ids.name],
            stdout=subprocess.PIPE,
            text=True,
            timeout=600,
            check=True,
        )
    return json.loads(done.stdout.splitlines()[-1])


async def workers(url: str, record_ids: list[str]) -> dict[str, list[float]]:
    """20 workers, each with its connection open (as a Celery worker keeps its client), one task per report; then
    as many GET /healthz from the same workers: the floor of this load generator on these cores."""
    waiting = list(record_ids)
    latencies: list[float] = []
    floor_left = len(record_ids)
    floor: list[float] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as own:
            (await own.get("/healthz")).raise_for_status()
            while waiting:
                record_id = waiting.pop()
                body = {"SUCCESS": [{"record_id": record_id, "result": {"sharpe": 1.5, "fitness": 0.9}}]}
                started = time.perf_counter()
                answer = await own.post("/api/tasks/update-status", json=body)
                latencies.append(time.perf_counter() - started)
                answer.raise_for_status()

    async def healthz() -> None:
        nonlocal floor_left
        async with httpx.AsyncClient(base_url=url, timeout=30) as own:
            (await own.get("/healthz")).raise_for_status()
            while floor_left > 0:
                floor_left -= 1
                started = time.perf_counter()
                (await own.get("/healthz")).raise_for_status()
                floor.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    await asyncio.gather(*(healthz() for _ in range(WORKERS)))
    return {"reports": latencies, "healthz": floor}


async def paced(url: str, path: str, count: int, every: float) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        codes = []
        start = time.perf_counter()
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n * every - time.perf_counter()))
            codes.append((await client.get(path)).status_code)
        return codes


async def probes_and_stats(emu: FeishuEmulator, url: str, seconds: float, probe_every: float, stats_every: float):
    emu.reset_calls()
    probe_codes, stats_codes = await asyncio.gather(
        paced(url, "/readyz", round(seconds / probe_every), probe_every),
        paced(url, "/api/stats", round(seconds / stats_every), stats_every),
    )
    return bitable_calls(emu), Counter(probe_codes), Counter(stats_codes)


async def idle_cycle(emu: FeishuEmulator, url: str) -> Counter:
    emu.reset_calls()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        (await client.post("/api/replenish")).raise_for_status()
    return bitable_calls(emu)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000


def floor(tasks: int) -> int:
    return 3 * math.ceil(tasks / 1000)


def brief(calls: Counter) -> str:
    return " ".join(f"{endpoint}:{n}" for endpoint, n in sorted(calls.items()))


async def run(smoke: bool) -> list[Result]:
    small, large = (100, 300) if smoke else (1_000, 10_000)
    minute = 6 if smoke else 60
    with tempfile.TemporaryDirectory() as tmp, emulator(latency=LATENCY) as emu:
        workdir = Path(tmp)
        with service(emu, workdir) as (url, log):
            one = await life(emu, url, log, small)
            console.print(f"life of {small}: {spent(one['calls'])} calls ({brief(one['calls'])})")
            busy, busy_probes, busy_stats = await probes_and_stats(emu, url, minute, 0.5, 1.5)
            console.print(f"busy minute: {spent(busy)} calls ({brief(busy)})")
            cycle = await idle_cycle(emu, url)
        with service(emu, workdir, READY_CHECK_SECONDS="0.5", STATS_CACHE_SECONDS="0.5") as (url, _):
            await asyncio.sleep(1)  # start-up's calls are not the idle hour's
            idle, _, _ = await probes_and_stats(emu, url, minute, 10 / 60, 30 / 60)
            console.print(f"idle hour (60x): {spent(idle)} calls ({brief(idle)})")
    with tempfile.TemporaryDirectory() as tmp, emulator(latency=LATENCY) as emu:
        with service(emu, Path(tmp)) as (url, log):
            ten = await life(emu, url, log, large)
            console.print(f"life of {large}: {spent(ten['calls'])} calls ({brief(ten['calls'])})")
    inside, reports, healthz = one["inside"], one["reports"], one["healthz"]
    idle_hour = spent(idle) * (60 / minute) + spent(cycle) / 4
    life_calls, busy_calls = spent(one["calls"]), spent(busy)
    p99 = pct(inside, 0.99)
    shared = {"emulator_ms_per_call": LATENCY * 1000, "smoke": smoke}
    return [
        Result(
            key="i",
            what=f"Feishu calls in the life of {small:,} tasks (10 ingests, cycles, {small:,} single-task reports "
            f"from {WORKERS} workers)",
            target="≤ 20 calls",
            ratio=life_calls,
            met=life_calls <= 20,
            details={
                "calls": brief(one["calls"]),
                "write_floor": floor(small),
                "cycles": one["cycles"],
                f"life_{large}_calls": spent(ten["calls"]),
                f"life_{large}_by_endpoint": brief(ten["calls"]),
                f"life_{large}_write_floor": floor(large),
                f"calls_per_1000_at_{large}": round(spent(ten["calls"]) * 1000 / large, 1),
                **shared,
            },
        ),
        Result(
            key="j",
            what=f"p99 answer time of a single-task report inside the service, {WORKERS} concurrent workers",
            target="≤ 50 ms",
            ratio=round(p99, 1),
            met=p99 <= 50 and len(inside) == len(reports),
            details={
                "inside_p50_ms": round(pct(inside, 0.5), 1),
                "inside_max_ms": round(max(inside) * 1000, 1),
                "client_p50_ms": round(pct(reports, 0.5), 1),
                "client_p99_ms": round(pct(reports, 0.99), 1),
                "client_floor_healthz_p50_ms": round(pct(healthz, 0.5), 1),
                "client_floor_healthz_p99_ms": round(pct(healthz, 0.99), 1),
                "client_p99_over_floor": round(pct(reports, 0.99) / pct(healthz, 0.99), 2),
                "reports": len(reports),
                **shared,
            },
        ),
        Result(
            key="k",
            what="Feishu calls for 120 /readyz and 40 /api/stats in a minute",
            target="≤ 5 calls",
            ratio=busy_calls,
            met=busy_calls <= 5 and not smoke,
            details={
                "calls": brief(busy),
                "probe_answers": dict(busy_probes),
                "stats_answers": dict(busy_stats),
                "idle_hour_calls": round(idle_hour, 1),
                "idle_hour_by_endpoint": brief(idle),
                "idle_cycle_calls": spent(cycle),
                "idle_day_calls": round(idle_hour * 24),
                **shared,
            },
        ),
    ]


def main() -> None:
    if sys.argv[1:2] == ["--workers"]:
        url, ids = sys.argv[2:4]
        print(json.dumps(asyncio.run(workers(url, json.loads(Path(ids).read_text())))))
        return
    for result in asyncio.run(run(smoke_flag())):
        result.emit()


if __name__ == "__main__":
    main()
