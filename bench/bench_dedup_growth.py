"""(f) Dedup cost as the identifier index grows: a 1,000-task batch with 1,000,000 identifiers indexed vs none.

Measured: the wall time of one `BitableTaskStore.add()` of 1,000 NEW payloads (every one unknown, so each
is looked up in the index, written ahead as "being written", sent in one batch_create of 1,000 rows, and
marked stored), for two stores side by side in this one run:

- at 0: a store opened on an empty DATA_DIR (its index starts empty and holds only what this run adds);
- at 1M: a store whose index was filled beforehand with 1,000,000 identifiers straight through
  `IdentifierIndex.mark_stored` (chunks of 100,000, sorted within a chunk; sha256 of the canonical JSON of
  distinct payloads, as the service computes them), done in a child process so the filling does not count
  in this process's memory. The fill uses a bigger page cache on its own connection only (scaffolding: the
  file is the same); the store then opens the file with its own settings.

One untimed warm-up batch each, then 15 rounds alternating which store goes first (A B, B A, ...) so drift on
this noisy machine hits both; ratio = median at 1M / median at 0. The payloads are hashed into tasks
before the clock starts: hashing costs the same at any index size.

The Feishu emulator runs in a child process with latency 0 and its rate limits off, so the Feishu write
(identical at both sizes) does not hide the dedup cost, and no 429 backoff can land in one arm: at the
target's 100 ms per call the write would dominate both medians and flatter the ratio. It is still a real
HTTP call through the service's Feishu edge, so the medians include its request and answer handling.

The index writes a batch's marks to SQLite's WAL and copies them back into its file on a background thread
(app/store/index.py): at 1M that copy, ~1,000 scattered pages, runs after the batch is answered, so it can
overlap the next measured batch of either arm (both arms alike, as the order alternates). The main thread's
CPU time per batch (`time.thread_time`: the service side without that thread and without the emulator) is
reported too, as its ratio is steadier than wall time when other work shares the two cores.

Also: batches of 1,000 payloads all already in the 1M index (random ones of the fill: pure dedup, no
Feishu call, checked), median in ms; and the slowest batch of each arm (the service's full garbage
collections, a few hundred ms each, land in some batches of either arm; the medians leave them out).
Peak RSS is this process's ru_maxrss (the service side, SDK imports included: `rss_after_imports_mb`),
taken after the 1M store has served its batches.

`--smoke`: 20,000 identifiers, 3 rounds, same code path.
"""

import asyncio
import multiprocessing
import random
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.identity import canonical_json, task_identifier
from app.models import NewTask
from app.store.bitable import BitableTaskStore
from app.store.index import IdentifierIndex
from bench.bench_reindex import EmulatorProcess, console, emulator_process, progress
from bench.common import Result, Stopwatch, bitable_settings, peak_rss_mb, smoke_flag
from tests.support.feishu import TABLE_ID

BATCH = 1_000
FILL_CHUNK = 100_000


def fill_payload(n: int) -> dict[str, Any]:
    return {"alpha": f"rank(ts_mean(close, {n}))", "region": "USA", "universe": "TOP3000"}


def new_payload(n: int) -> dict[str, Any]:
    return {"alpha": f"rank(ts_delta(volume, {n}))", "region": "CHN", "universe": "TOP2000"}


def new_task(payload: dict[str, Any]) -> NewTask:
    """As the service makes one (Service._new_task): the identifier is sha256 of the canonical JSON."""
    return NewTask(identifier=task_identifier(payload), payload=payload, canonical=canonical_json(payload))


def _fill_index(conn: Connection, path: str, count: int) -> None:
    """Child process: put `count` identifiers into the index at `path`, mark it complete, report progress."""
    index = IdentifierIndex(Path(path))
    index.open()
    index.db.execute("PRAGMA cache_size=-65536")  # this connection only: the filling is scaffolding
    for start in range(0, count, FILL_CHUNK):
        stop = min(start + FILL_CHUNK, count)
        index.mark_stored(sorted((task_identifier(fill_payload(n)), f"rec{n:014d}") for n in range(start, stop)))
        conn.send(stop)
    index.mark_complete(True)
    index.close()
    conn.send("done")


def fill_index(path: Path, count: int, bar: Any) -> float:
    task = bar.add_task(f"filling the index with {count:,} identifiers (child process)", total=count)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=_fill_index, args=(child, str(path), count))
    started = time.perf_counter()
    proc.start()
    child.close()
    try:
        while True:
            while not parent.poll(1):
                if not proc.is_alive():
                    raise RuntimeError(f"the fill process died (exit {proc.exitcode})")
            message = parent.recv()
            if message == "done":
                break
            bar.update(task, completed=message)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        parent.close()
    return time.perf_counter() - started


async def measure(
    emu: EmulatorProcess, root: Path, fill: int, rounds: int, duplicates: int, label: str, bar: Any
) -> dict:
    empty = BitableTaskStore.from_settings(bitable_settings(emu, root / "empty"))
    full = BitableTaskStore.from_settings(bitable_settings(emu, root / "full"))
    rss_after_imports = peak_rss_mb()
    await empty.open()  # the table is empty: its rebuild reads one empty page
    await full.open()  # the index is complete: no rebuild
    if empty.index.count() != 0 or full.index.count() != fill:
        raise RuntimeError(f"unexpected index sizes {empty.index.count()} / {full.index.count()}")
    times: dict[str, list[float]] = {"empty": [], "full": []}
    cpu: dict[str, list[float]] = {"empty": [], "full": []}
    stores = {"empty": empty, "full": full}
    next_n = 0
    task = bar.add_task(f"1,000-task batches (at 0 and at {label}, alternating)", total=2 * (rounds + 1))
    try:
        for r in range(rounds + 1):  # round 0 is the warm-up
            for name in ("empty", "full") if r % 2 == 0 else ("full", "empty"):
                tasks = [new_task(new_payload(n)) for n in range(next_n, next_n + BATCH)]
                next_n += BATCH
                cpu_before = time.thread_time()
                with Stopwatch() as watch:
                    added = await stores[name].add(tasks)
                cpu_seconds = time.thread_time() - cpu_before
                if added.error is not None or not all(s.created for s in added.stored):
                    raise RuntimeError("a new payload was not created")
                if r > 0:
                    times[name].append(watch.seconds)
                    cpu[name].append(cpu_seconds)
                bar.advance(task)
        rng = random.Random(7)
        before = emu.counts()["calls"]["batch_create"]
        dup_times = []
        dup_task = bar.add_task(f"all-duplicate batches at {label}", total=duplicates)
        for _ in range(duplicates):
            tasks = [new_task(fill_payload(n)) for n in rng.sample(range(fill), BATCH)]
            with Stopwatch() as watch:
                added = await full.add(tasks)
            if added.error is not None or any(s.created for s in added.stored):
                raise RuntimeError("a duplicate was created")
            dup_times.append(watch.seconds)
            bar.advance(dup_task)
        if emu.counts()["calls"]["batch_create"] != before:
            raise RuntimeError("an all-duplicate batch called Feishu")
        indexed = full.index.count()
    finally:
        await empty.close()
        await full.close()
    return {
        "empty": times["empty"],
        "full": times["full"],
        "cpu_empty": cpu["empty"],
        "cpu_full": cpu["full"],
        "duplicates": dup_times,
        "indexed": indexed,
        "rss_after_imports_mb": rss_after_imports,
    }


def main() -> None:
    smoke = smoke_flag()
    fill = 20_000 if smoke else 1_000_000
    rounds = 3 if smoke else 15
    duplicates = 2 if smoke else 5
    label = f"{fill // 1000:,}k" if fill < 1_000_000 else f"{fill // 1_000_000}M"
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp, progress() as bar:
        root = Path(tmp)
        index_path = root / "full" / f"index-{TABLE_ID}.db"
        fill_seconds = fill_index(index_path, fill, bar)
        with emulator_process(latency=0.0, rate_limits=False) as emu:
            measured = asyncio.run(measure(emu, root, fill, rounds, duplicates, label, bar))
        index_mb = sum(p.stat().st_size for p in index_path.parent.glob(f"{index_path.name}*")) / 2**20
    peak = peak_rss_mb()
    at_0 = statistics.median(measured["empty"]) * 1000
    at_full = statistics.median(measured["full"]) * 1000
    duplicate_ms = statistics.median(measured["duplicates"]) * 1000
    ratio = at_full / at_0
    console.print(
        f"1,000 new tasks: median {at_0:.1f} ms at 0, {at_full:.1f} ms at {label} ({rounds} each);"
        f" 1,000 duplicates at {label}: {duplicate_ms:.1f} ms; index {index_mb:.1f} MB; peak RSS {peak:.0f} MB"
    )
    Result(
        key="f",
        what=f"time per 1,000-task batch of new payloads at {label} indexed vs at 0 (emulator latency 0)",
        target="≤ 1.5 ×, peak RSS ≤ 200 MB",
        ratio=round(ratio, 3),
        met=ratio <= 1.5 and peak <= 200,
        details={
            "indexed": fill,
            "batches_each": rounds,
            "median_at_0_ms": round(at_0, 1),
            f"median_at_{label}_ms": round(at_full, 1),
            "max_at_0_ms": round(max(measured["empty"]) * 1000, 1),
            f"max_at_{label}_ms": round(max(measured["full"]) * 1000, 1),
            "cpu_ratio": round(statistics.median(measured["cpu_full"]) / statistics.median(measured["cpu_empty"]), 3),
            "duplicate_batch_ms": round(duplicate_ms, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_after_imports_mb": round(measured["rss_after_imports_mb"], 1),
            "index_file_mb": round(index_mb, 1),
            "fill_seconds": round(fill_seconds, 1),
        },
    ).emit()


if __name__ == "__main__":
    main()
