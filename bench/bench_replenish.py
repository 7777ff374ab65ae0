"""(c) One 500-task replenish cycle vs its floor.

Ours: `ReplenishCycle.run()` on Bitable (the emulator, 100 ms a call) and RabbitMQ (a queue declared
by "the workers" with x-max-priority), with 500 PENDING tasks waiting. Floor, timed in the same run:
the three Feishu round trips a cycle cannot avoid (search the 500, batch_update the 500 claims, count
what is left) sent raw through the same SDK edge, plus a raw kombu publish of 500 messages with
publisher confirms over one producer. Rounds alternate floor / ours; medians are compared.
"""

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Producer
from rich.console import Console

from app.broker import CeleryPublisher
from app.claims import ClaimJournal
from app.main import wire
from app.models import StatusChange, TaskStatus
from app.notify import LogNotifier
from app.store.bitable import BitableTaskStore
from bench.common import RABBIT_URL, Result, bitable_settings, emulator, smoke_flag
from tests.support.brokers import declare_workers_queue

console = Console(stderr=True)


def raw_publish(queue: str, count: int) -> float:
    with Connection(RABBIT_URL, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("", type="direct"))
        started = time.perf_counter()
        for n in range(count):
            producer.publish({"n": n, "alpha": "rank(close)"}, routing_key=queue, priority=1, declare=[])
        elapsed = time.perf_counter() - started
        conn.channel().queue_purge(queue)
    return elapsed


async def floor_once(store: BitableTaskStore, queue: str, tasks: int) -> float:
    started = time.perf_counter()
    picked = await store.pending(tasks)
    await store.update([StatusChange(r.record_id, TaskStatus.PROCESSING, attempts=1) for r in picked])
    await store.page(TaskStatus.PENDING, 1, None)
    feishu = time.perf_counter() - started
    await store.update([StatusChange(r.record_id, TaskStatus.PENDING, attempts=0) for r in picked])  # untimed reset
    return feishu + await asyncio.to_thread(raw_publish, queue, tasks)


async def run(rounds: int, tasks: int) -> dict:
    queue = f"tm-bench-{uuid.uuid4().hex[:8]}"
    declare_workers_queue(RABBIT_URL, queue, max_priority=10)
    with emulator() as emu, tempfile.TemporaryDirectory() as tmp:
        settings = bitable_settings(
            emu,
            Path(tmp),
            celery_broker_url=RABBIT_URL,
            celery_queue=queue,
            replenish_batch_size=tasks,
            replenish_threshold=10**9,
        )
        store = BitableTaskStore.from_settings(settings)
        await store.open()
        publisher = CeleryPublisher(settings)
        journal = ClaimJournal(Path(tmp) / "claims.db")
        journal.open()
        services = wire(store, settings, publisher=publisher, notifier=LogNotifier(), journal=journal)
        floors, cycles, calls = [], [], []
        try:
            for r in range(rounds):
                await services.tasks.ingest_tasks([{"round": r, "n": n} for n in range(tasks)])
                floors.append(await floor_once(store, queue, tasks))
                emu.reset_calls()
                started = time.perf_counter()
                report = await services.cycle.run()
                cycles.append(time.perf_counter() - started)
                calls.append(len(emu.calls))
                assert report.published == tasks, report
                await asyncio.to_thread(lambda: Connection(RABBIT_URL).channel().queue_purge(queue))
                console.print(f"round {r + 1}: floor {floors[-1]:.3f}s, cycle {cycles[-1]:.3f}s")
        finally:
            journal.close()
            await publisher.close()
            await store.close()
            with Connection(RABBIT_URL) as conn:
                conn.channel().queue_delete(queue)
    return {"floor": statistics.median(floors), "cycle": statistics.median(cycles), "calls": max(calls)}


def main() -> None:
    smoke = smoke_flag()
    measured = asyncio.run(run(rounds=1 if smoke else 5, tasks=50 if smoke else 500))
    ratio = measured["cycle"] / measured["floor"]
    Result(
        key="c",
        what="one 500-task replenish cycle vs 3 Feishu round trips + a raw confirmed publish of 500",
        target="≤ 1.3×",
        ratio=round(ratio, 3),
        met=ratio <= 1.3,
        details={
            "cycle_s": round(measured["cycle"], 3),
            "floor_s": round(measured["floor"], 3),
            "feishu_calls_per_cycle": measured["calls"],
        },
    ).emit()


if __name__ == "__main__":
    main()
