"""kill -9 the service in the middle of a large ingest, restart it on the same DATA_DIR, resend: exactly once.

The service is a real `uvicorn` process against the Feishu emulator. SIGKILL leaves the identifier index with
writes marked WRITING whose rows may or may not be in the table; the restarted service reconciles them at start
(it searches the table), and the resend must then neither lose a row nor write one twice. Reads that meet a
write answer 1254291 (the emulator's read conflicts are on); the resends meet creates that land but are answered
HTTP 200 + 1254002, and the reused client_token's documented refusals (1254608, 1255006).
"""

import json
import os
import random
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.feishu.emulator import FeishuEmulator
from tests.support.feishu import APP_ID, APP_SECRET, APP_TOKEN, TABLE_ID, clear_token_cache
from tests.support.modes import size
from tests.support.processes import running_service, wait_until
from tests.support.tasks import identifier, make_payload

REQUEST_SIZE = 1_000
OVERLAP = 100  # each request repeats this many payloads of the one before it


def service(env: dict[str, str], workdir: Path, name: str):
    """The service as tests/support/processes.py runs it, handing out the process so a test can kill it."""
    return running_service(env, workdir, name=name)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def service_env(emu: FeishuEmulator, data_dir: Path, retry_base: float = 0.05) -> dict[str, str]:
    return {
        "STORE": "bitable",
        "DATA_DIR": str(data_dir),
        "FEISHU_APP_ID": emu.app_id,
        "FEISHU_APP_SECRET": emu.app_secret,
        "FEISHU_BITABLE_APP_TOKEN": APP_TOKEN,
        "FEISHU_BITABLE_TABLE_ID": TABLE_ID,
        "FEISHU_DOMAIN": emu.url,
        "FEISHU_TIMEOUT_SECONDS": "10",
        "FEISHU_RETRY_BASE_SECONDS": str(retry_base),
        "SCHEDULER_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }


def plan(n_requests: int, seed: int) -> list[list[dict[str, Any]]]:
    """Requests of 1,000 payloads, each repeating OVERLAP payloads of the one before."""
    rng = random.Random(seed)
    fresh = REQUEST_SIZE - OVERLAP
    payloads = [make_payload(n, rng) for n in range(OVERLAP + fresh * n_requests)]
    return [payloads[i * fresh : i * fresh + REQUEST_SIZE] for i in range(n_requests)]


def post(url: str, request: list[dict[str, Any]]) -> httpx.Response | Exception:
    """One request; a connection the killed service dropped is an answer too (the client never got one)."""
    try:
        return httpx.post(f"{url}/api/tasks/ingest", json=request, timeout=120)
    except httpx.TransportError as exc:
        return exc


def write_in_flight(emu: FeishuEmulator) -> bool:
    """A batch_create the emulator has read in full and not yet answered (it applies it even if the caller dies)."""
    with emu._lock:  # the emulator's own write-conflict bookkeeping: the only view of an unanswered write
        return bool(emu._writing)


def index_writing(data_dir: Path) -> set[str]:
    """Identifiers the index holds as WRITING (sent, answer not recorded), read-only beside a running service."""
    db = sqlite3.connect(f"file:{data_dir / f'index-{TABLE_ID}.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT identifier FROM writing").fetchall()  # IdentifierIndex keeps reservations apart
    finally:
        db.close()
    return {key.hex() for (key,) in rows}


def resend_and_check(url: str, requests: list[list[dict[str, Any]]], emu: FeishuEmulator) -> dict[str, str]:
    """Resend every request at once; each item must be created or duplicate with the table's record id."""
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda request: post(url, request), requests))
    rows = emu.rows(APP_TOKEN, TABLE_ID)
    record_of = {fields["Identifier"]: rid for rid, fields in rows.items()}
    outcomes: Counter = Counter()
    for request, answer in zip(requests, answers, strict=True):
        assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
        items = answer.json()["items"]
        assert len(items) == len(request)
        for item, payload in zip(items, request, strict=True):
            assert item["identifier"] == identifier(payload)
            assert item["outcome"] in ("created", "duplicate"), item
            assert item["record_id"] == record_of.get(item["identifier"]), item
            outcomes[item["outcome"]] += 1
    return dict(outcomes)


def check_table(emu: FeishuEmulator, requests: list[list[dict[str, Any]]]) -> int:
    by_identifier = {identifier(p): p for request in requests for p in request}
    rows = emu.rows(APP_TOKEN, TABLE_ID)
    counts = Counter(fields["Identifier"] for fields in rows.values())
    twice = [i for i, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} identifiers stored more than once"
    assert set(counts) == set(by_identifier), f"{len(set(by_identifier) - set(counts))} payloads missing"
    assert len(rows) == len(by_identifier)
    for fields in rows.values():
        assert json.loads(fields["Payload"]) == by_identifier[fields["Identifier"]]
    return len(rows)


@pytest.fixture
def emulator(seed: int) -> Iterator[FeishuEmulator]:
    clear_token_cache(APP_ID)
    emu = FeishuEmulator(app_id=APP_ID, app_secret=APP_SECRET, seed=seed).start()
    emu.add_table(APP_TOKEN, TABLE_ID)
    emu.read_conflicts = True
    try:
        yield emu
    finally:
        emu.stop()
        clear_token_cache(APP_ID)


def add_resend_faults(emu: FeishuEmulator) -> None:
    """HTTP-200 transient codes while the restarted service writes: landed (its retry reuses the token) or not."""
    emu.add_fault("failed", endpoint="batch_create", times=1, landed=True)  # its retry meets the reused token
    emu.add_fault("1255004", endpoint="batch_create", times=1)
    emu.add_fault("1255002", endpoint="search", times=1)


@pytest.mark.parametrize("repeat_token_answer", ["1254608", "1255006"])
def test_kill9_while_a_write_is_in_flight_then_restart_and_resend_stores_each_payload_once(
    emulator: FeishuEmulator, tmp_path: Path, seed: int, repeat_token_answer: str
):
    emulator.repeat_token_answer = repeat_token_answer
    requests = plan(size(4, 12), seed)
    data_dir = tmp_path / "data"
    emulator.latency = 0.2  # every call takes 0.2 s, so a write is in flight most of the time
    with service(service_env(emulator, data_dir), tmp_path, "first") as (url, proc):
        with ThreadPoolExecutor(len(requests)) as pool:
            sent = [pool.submit(post, url, request) for request in requests]
            wait_until(
                lambda: emulator.count("batch_create") >= 1 and write_in_flight(emulator),
                60,
                "a second write in flight after a first one was answered",
                interval=0.005,
            )
            kill9(proc)
            answered = sum(isinstance(f.result(), httpx.Response) for f in sent)
    # What the emulator had read before the kill, it applies: wait for that, as Feishu would have by a restart.
    wait_until(lambda: not write_in_flight(emulator), 10, "the orphaned write to be applied")
    landed = {fields["Identifier"] for fields in emulator.rows(APP_TOKEN, TABLE_ID).values()}
    writing = index_writing(data_dir)
    distinct = len({identifier(p) for request in requests for p in request})
    assert 0 < len(landed) < distinct, "the kill was not in the middle of the ingest"
    # the rest of `writing` is the next batch, reserved while that write was in flight and never sent
    assert writing & landed, "the orphaned write is not both applied and unconfirmed in the index"

    emulator.latency = 0.0
    with service(service_env(emulator, data_dir), tmp_path, "restarted") as (url, _):
        assert not index_writing(data_dir), "start-up left writes unreconciled"
        add_resend_faults(emulator)
        outcomes = resend_and_check(url, requests, emulator)
        emulator.clear_faults()
    rows = check_table(emulator, requests)
    print(
        f"\n[crash in-flight] {repeat_token_answer}={emulator.count('batch_create', code=int(repeat_token_answer))}"
        f" 1254002={emulator.count('batch_create', code=1254002)} requests={len(requests)}x{REQUEST_SIZE}"
        f" distinct={distinct} answered_before_kill="
        f"{answered} rows_at_kill={len(landed)} writing_at_kill={len(writing)} resend={outcomes} rows={rows}"
    )
    assert outcomes["created"] == distinct - len(landed)


@pytest.mark.parametrize("answer", ["lost_answer", "failed"])
def test_kill9_after_a_write_landed_unanswered_then_restart_and_resend_stores_each_payload_once(
    emulator: FeishuEmulator, tmp_path: Path, seed: int, answer: str
):
    requests = plan(size(3, 8), seed + 1)
    data_dir = tmp_path / "data"
    # Deterministic "applied but not recorded": the emulator applies the first write and drops its answer (or
    # answers it HTTP 200 + 1254002); the service then sleeps a 30 s retry backoff with the rows marked WRITING,
    # and is killed in that sleep.
    emulator.add_fault(answer, endpoint="batch_create", times=1, landed=answer != "lost_answer")
    with service(service_env(emulator, data_dir, retry_base=30), tmp_path, "first") as (url, proc):
        with ThreadPoolExecutor(len(requests)) as pool:
            sent = [pool.submit(post, url, request) for request in requests]
            wait_until(
                lambda: any(c.endpoint == "batch_create" and (c.http_status is None or c.code) for c in emulator.calls),
                60,
                "the first write to land unanswered",
                interval=0.005,
            )
            kill9(proc)
            assert not any(isinstance(f.result(), httpx.Response) for f in sent)
    landed = {fields["Identifier"] for fields in emulator.rows(APP_TOKEN, TABLE_ID).values()}
    writing = index_writing(data_dir)
    distinct = len({identifier(p) for request in requests for p in request})
    assert landed and landed <= writing, "the landed write is not unconfirmed in the index"
    # the rest of `writing` is reserved for the next write, which that one's retry kept from being sent
    assert emulator.count("batch_create") == 1
    assert len(landed) < distinct

    with service(service_env(emulator, data_dir), tmp_path, "restarted") as (url, _):
        assert not index_writing(data_dir), "start-up left writes unreconciled"
        add_resend_faults(emulator)
        outcomes = resend_and_check(url, requests, emulator)
        emulator.clear_faults()
    rows = check_table(emulator, requests)
    print(
        f"\n[crash {answer}] requests={len(requests)}x{REQUEST_SIZE} distinct={distinct} "
        f"rows_at_kill={len(landed)} writing_at_kill={len(writing)} resend={outcomes} rows={rows}"
    )
    assert outcomes["created"] == distinct - len(landed)
