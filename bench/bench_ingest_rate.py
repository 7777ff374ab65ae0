"""(b) Ingest rate with 1,000-task requests vs the single-writer ceiling.

Ceiling: rows per second of raw `batch_create` calls of 1,000 rows, sent back to back (one in flight, as
Feishu advises) to the emulator at 100 ms a call — through the service's own Feishu edge (FeishuTable, one
pooled HTTP client), rows of the same shape, their bodies encoded before the clock starts.
Ours: `uvicorn app.main:app` in a subprocess on that emulator, 3 clients posting 1,000-task requests of
new payloads, so the next batch is prepared while a write is in flight. Rounds alternate
ceiling / ours and the best round of each is compared.
"""

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from rich.console import Console

from app.store.feishu import FeishuTable, create_body
from bench.bench_coalescing import service_env
from bench.common import Result, emulator, smoke_flag
from tests.support.feishu import APP_TOKEN, TABLE_ID, lark_client
from tests.support.processes import service_process

console = Console(stderr=True)


async def ceiling_rate(emu, calls: int) -> float:
    table = FeishuTable(lark_client(emu, 60), APP_TOKEN, TABLE_ID)
    bodies = [
        create_body(
            [
                {
                    "Identifier": uuid.uuid4().hex * 2,
                    "Status": "PENDING",
                    "Payload": json.dumps({"alpha": f"rank(close_{i})", "region": "USA"}),
                    "CreatedAt": int(time.time() * 1000),
                }
                for i in range(1000)
            ]
        )
        for _ in range(calls)
    ]  # encoded before the clock starts: the ceiling is the calls alone
    await table.batch_create(bodies[0], str(uuid.uuid4()))  # token fetch and warm-up, untimed
    started = time.perf_counter()
    for body in bodies[1:]:
        await table.batch_create(body, str(uuid.uuid4()))
    return 1000 * (calls - 1) / (time.perf_counter() - started)


async def service_rate(url: str, requests: int, clients: int, offset: int) -> float:
    bodies = [[{"alpha": f"rank(close_{offset + r * 1000 + i})"} for i in range(1000)] for r in range(requests)]
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await http.post("/api/tasks/ingest", json=[{"warm": offset}])
        queue: asyncio.Queue = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)

        async def client() -> None:
            while not queue.empty():
                response = await http.post("/api/tasks/ingest", json=queue.get_nowait())
                assert response.json()["created"] == 1000, response.text[:300]

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return 1000 * requests / (time.perf_counter() - started)


def main() -> None:
    smoke = smoke_flag()
    rounds, calls, requests = (1, 3, 3) if smoke else (2, 11, 20)
    ceilings, ours = [], []
    with emulator() as emu, tempfile.TemporaryDirectory() as tmp:
        with service_process(service_env(emu, Path(tmp) / "data"), Path(tmp)) as url:
            for r in range(rounds):
                ceilings.append(asyncio.run(ceiling_rate(emu, calls)))
                ours.append(asyncio.run(service_rate(url, requests, clients=3, offset=r * 10_000_000)))
                console.print(f"round {r + 1}: ceiling {ceilings[-1]:,.0f} rows/s, ours {ours[-1]:,.0f} tasks/s")
    ratio = max(ours) / max(ceilings)
    Result(
        key="b",
        what="ingest rate, 1,000-task requests, vs the single-writer ceiling",
        target="≥ 0.85",
        ratio=round(ratio, 3),
        met=ratio >= 0.85,
        details={
            "ours_tasks_per_s": round(max(ours)),
            "ceiling_rows_per_s": round(max(ceilings)),
            "ideal_at_100ms": 10_000,
            "rounds": rounds,
        },
    ).emit()


if __name__ == "__main__":
    main()
