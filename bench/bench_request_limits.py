"""h: an oversized body is refused fast and cheaply, and a big batch leaves the loop free (issue 12, item 1).

Against a real `python -m app serve` process on the embedded default:
- a 50 MB body of `[{},…]` (declared by Content-Length, and streamed chunked), with and without API_KEYS:
  the time to the answer and the server's peak RSS (VmHWM), targets < 1 s and < 300 MB;
- /healthz polled every 10 ms while a batch of 3,000 payloads of 10 KB (30 MB, under the default limit) is
  ingested: the longest /healthz answer during it.
"""

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import Result, smoke_flag
from tests.support.processes import running_service

KEY = "bench-key-0123456789"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def empty_objects(megabytes: int) -> bytes:
    count = megabytes * 1024 * 1024 // 3
    return b"[" + b"{}," * (count - 1) + b"{}]"


def refuse(url: str, body: bytes, chunked: bool, headers: dict[str, str]) -> tuple[int, float]:
    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    started = time.perf_counter()
    try:
        response = httpx.post(
            f"{url}/api/tasks/ingest",
            content=chunks() if chunked else body,
            headers={"content-type": "application/json", **headers},
            timeout=60,
        )
        status = response.status_code
    except httpx.HTTPError as exc:  # the server closed while the rest of the body was on its way
        status = f"closed ({type(exc).__name__})"
    return status, time.perf_counter() - started


def healthz_during(url: str, payloads: list[dict]) -> tuple[float, float, int]:
    """The longest /healthz answer while the batch is ingested, the ingest's own time, and its status."""
    done = threading.Event()
    worst = 0.0

    def poll() -> None:
        nonlocal worst
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{url}/healthz")
                worst = max(worst, time.perf_counter() - started)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    try:
        status = httpx.post(f"{url}/api/tasks/ingest", json=payloads, timeout=300).status_code
    finally:
        took = time.perf_counter() - started
        done.set()
        poller.join()
    return worst, took, status


def main() -> None:
    smoke = smoke_flag()
    megabytes = 2 if smoke else 50
    body = empty_objects(megabytes)
    details: dict = {}
    worst_seconds, worst_rss = 0.0, 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for keys in ("", KEY):
            label = "with_keys" if keys else "no_keys"
            env = {
                "DATA_DIR": str(Path(workdir) / label),
                "API_KEYS": keys,
                "SCHEDULER_ENABLED": "false",
                "LOG_LEVEL": "WARNING",
                **({"MAX_REQUEST_BYTES": str(1024 * 1024)} if smoke else {}),
            }
            with running_service(env, Path(workdir), name=label) as (url, proc):
                for chunked in (False, True):
                    status, seconds = refuse(url, body, chunked, {})
                    way = "chunked" if chunked else "length"
                    details[f"{label}_{way}"] = f"{status} in {seconds:.3f}s"
                    worst_seconds = max(worst_seconds, seconds)
                rss = peak_rss_mb(proc.pid)
                details[f"{label}_peak_rss_mb"] = round(rss)
                worst_rss = max(worst_rss, rss)
            if keys:  # with a valid key too: the limit, not the key, refuses it
                with running_service(env, Path(workdir), name=label + "-valid") as (url, proc):
                    status, seconds = refuse(url, body, False, {"X-API-Key": KEY})
                    details["valid_key_length"] = f"{status} in {seconds:.3f}s"
                    worst_seconds = max(worst_seconds, seconds)
                    worst_rss = max(worst_rss, peak_rss_mb(proc.pid))
        count = 30 if smoke else 3_000
        payloads = [{"n": n, "blob": os.urandom(5_000).hex()[: 10_000 - 20]} for n in range(count)]  # 10 KB each
        env = {"DATA_DIR": str(Path(workdir) / "batch"), "SCHEDULER_ENABLED": "false", "LOG_LEVEL": "WARNING"}
        with running_service(env, Path(workdir), name="batch") as (url, _):
            stall, took, status = healthz_during(url, payloads)
        details["batch"] = f"{count} x 10 KB: {status} in {took:.2f}s, longest /healthz {stall * 1000:.0f} ms"
    Result(
        key="h",
        what="a 50 MB body is refused (with and without API_KEYS)",
        target="< 1 s and < 300 MB peak RSS",
        ratio=round(worst_seconds, 3),
        met=worst_seconds < 1 and worst_rss < 300,
        details=details | {"worst_seconds": round(worst_seconds, 3), "worst_rss_mb": round(worst_rss)},
    ).emit()
    json.dump(details, sys.stderr, indent=1)


if __name__ == "__main__":
    main()
