"""Load: 50 concurrent clients with overlapping payloads against the service and a slow Feishu.

The service runs as `uvicorn app.main:app` in a subprocess against the Feishu emulator (100 ms a call, rate
limits on). 50 clients, each with its own keep-alive connection, loop for the duration: each picks a request of
20-200 payloads from its own seeded RNG and POSTs it to /api/tasks/ingest.

Payloads come from one shared pool of numbered tasks. A frontier sweeps across the pool over the run: half of
a request's payloads come from a hot window just behind the frontier (tasks that are new, or whose write is
still in flight, and that the other 49 clients are sending at the same moment), the other half from anywhere
behind it (old tasks: duplicates). Keys come in a shuffled order, so one task reaches the service as different
JSON texts, and a request may name the same task twice.

Every answer finishes together when a write lands, so the clients do next to nothing while the load runs (the
pool is encoded and hashed beforehand, answers are checked afterwards): otherwise the measured latency would
be the test's own queue.

Asserted: no 5xx (nor any other non-200, nor a transport error); every answer is consistent with its request;
one record id per task across every answer; each task answered `created` exactly once; the table holds each
Identifier exactly once, and its rows are exactly the distinct tasks sent, with the answered record ids.
"""

import asyncio
import hashlib
import json
import math
import random
import re
import ssl
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.bench_coalescing import service_env
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.modes import FULL, size
from tests.support.processes import service_process

CLIENTS = 50
DURATION = size(8, 60)  # seconds of load
POOL = size(3_000, 20_000)  # numbered tasks the frontier sweeps over
HOT = size(300, 1_000)  # the window just behind the frontier: the tasks being created right now
MIN_ITEMS, MAX_ITEMS = 20, 200
LATENCY = 0.1  # seconds per Feishu call
RECORD_ID = re.compile(r"^rec[A-Za-z0-9]{14}$")
REGIONS = ("USA", "CHN", "EUR", "JPN")
JSON = {"content-type": "application/json"}


def canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Pool:
    """Task n: its key/value JSON fragments (joined in any order to send it), canonical text and sha256."""

    fragments: list[list[str]] = field(default_factory=list)
    canonical: list[str] = field(default_factory=list)
    identifier: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, size: int) -> "Pool":
        pool = cls()
        for n in range(size):
            task = {"alpha": f"rank(ts_delta(close_{n}, 5))", "region": REGIONS[n % 4], "n": n, "decay": n % 7}
            pool.fragments.append([json.dumps(k) + ":" + json.dumps(v) for k, v in task.items()])
            pool.canonical.append(canonical(task))
            # computed here, independently of app.identity
            pool.identifier.append(hashlib.sha256(pool.canonical[n].encode("utf-8")).hexdigest())
        return pool

    def body(self, numbers: list[int], rng: random.Random) -> bytes:
        items = []
        for n in numbers:
            fragments = self.fragments[n][:]
            rng.shuffle(fragments)
            items.append("{" + ",".join(fragments) + "}")
        return ("[" + ",".join(items) + "]").encode("utf-8")


@dataclass
class Exchange:
    client: int
    numbers: list[int]
    seconds: float
    status: int | None  # None: a transport error
    answer: bytes | str


async def client(
    http: httpx.AsyncClient, number: int, seed: int, pool: Pool, start: float, log: list[Exchange]
) -> None:
    rng = random.Random(f"{seed}:{number}")
    while (elapsed := time.monotonic() - start) < DURATION:
        frontier = HOT + (len(pool.identifier) - HOT) * elapsed / DURATION
        numbers = [
            int(frontier - HOT * rng.random()) if rng.random() < 0.5 else int(frontier * rng.random())
            for _ in range(rng.randint(MIN_ITEMS, MAX_ITEMS))
        ]
        body = pool.body(numbers, rng)
        t0 = time.perf_counter()
        try:
            response = await http.post("/api/tasks/ingest", content=body, headers=JSON)
        except httpx.HTTPError as exc:
            log.append(Exchange(number, numbers, time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}"))
            continue
        log.append(Exchange(number, numbers, time.perf_counter() - t0, response.status_code, response.content))


@dataclass
class Verdict:
    """Every answer checked against its request and against each other."""

    pool: Pool
    failures: list[str] = field(default_factory=list)  # transport errors and non-200 answers
    problems: list[str] = field(default_factory=list)  # inconsistent 200 answers
    record_ids: dict[str, str] = field(default_factory=dict)  # identifier → the record id answered for it
    created: Counter = field(default_factory=Counter)  # identifier → `created` answers
    sent: set[str] = field(default_factory=set)

    def check(self, exchange: Exchange) -> None:
        want = [self.pool.identifier[n] for n in exchange.numbers]
        self.sent.update(want)
        if exchange.status != 200:
            status = "transport error" if exchange.status is None else exchange.status
            self.failures.append(f"client {exchange.client}: {status} {exchange.answer[:300]!r}")
            return
        answer = json.loads(exchange.answer)
        items = answer.get("items", [])
        if (answer.get("received"), len(items)) != (len(want), len(want)):
            self.problems.append(f"received {answer.get('received')}, {len(items)} items for {len(want)} payloads")
            return
        outcomes = Counter(item["outcome"] for item in items)
        if (answer["created"], answer["duplicates"]) != (outcomes["created"], outcomes["duplicate"]) or set(
            outcomes
        ) - {"created", "duplicate"}:
            self.problems.append(f"counts {answer['created']}/{answer['duplicates']} but outcomes {dict(outcomes)}")
        seen_here: set[str] = set()
        for item, ident in zip(items, want, strict=True):
            if item["identifier"] != ident:
                self.problems.append(f"identifier {item['identifier']} answered for a payload hashing to {ident}")
                continue
            record_id = item["record_id"]
            if not isinstance(record_id, str) or not RECORD_ID.match(record_id):
                self.problems.append(f"{ident}: record id {record_id!r}")
                continue
            if self.record_ids.setdefault(ident, record_id) != record_id:
                self.problems.append(f"{ident}: record id {record_id}, earlier {self.record_ids[ident]}")
            if item["outcome"] == "created":
                if ident in seen_here:
                    self.problems.append(f"{ident}: created twice in one request")
                self.created[ident] += 1
            seen_here.add(ident)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def plain(value: object) -> object:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "".join(str(v.get("text", "")) for v in value)
    return value


async def test_fifty_clients_with_overlapping_payloads(feishu, tmp_path: Path, seed: int, capsys) -> None:
    feishu.latency = LATENCY
    assert feishu.rate_limits
    pool = Pool.build(POOL)
    log: list[Exchange] = []
    with service_process(service_env(feishu, tmp_path / "data"), tmp_path) as url:
        feishu.reset_calls()
        # one keep-alive connection per client: one shared pool of 50 costs httpcore a scan of every connection
        # per request, a client-side queue that showed up as half the measured latency
        # (one TLS context for all: plain http needs none, and httpx builds one per client, 50 ms each)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        tls = ssl.create_default_context()
        async with AsyncExitStack() as stack:
            https = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60, limits=limits, verify=tls))
                for _ in range(CLIENTS)
            ]
            start = time.monotonic()
            await asyncio.gather(*(client(http, n, seed, pool, start, log) for n, http in enumerate(https)))
            elapsed = time.monotonic() - start
    rows = feishu.rows(APP_TOKEN, TABLE_ID)
    by_endpoint = Counter(c.endpoint for c in feishu.calls)
    rate_limited = feishu.count(code=99991400)
    written = [c.n_records for c in feishu.calls if c.endpoint == "batch_create" and c.code == 0]

    verdict = Verdict(pool)
    for exchange in log:
        verdict.check(exchange)
    statuses = Counter(exchange.status for exchange in log)
    latencies = [exchange.seconds for exchange in log]
    payloads = sum(len(exchange.numbers) for exchange in log)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    with capsys.disabled():
        print(
            f"\nLOAD ({'full' if FULL else 'small'}, seed {seed}): {CLIENTS} clients for {DURATION} s "
            f"(wall {elapsed:.1f} s): {len(log)} requests = {len(log) / elapsed:.1f} req/s, "
            f"{payloads} payloads sent, {len(rows)} distinct tasks stored = {len(rows) / elapsed:.0f} tasks/s "
            f"(offered at ~{POOL / DURATION:.0f}/s by the frontier); "
            f"latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
            f"batch_create calls {by_endpoint['batch_create']} ({len(written)} succeeded, rows per write "
            f"min {min(written, default=0)} / mean {sum(written) / max(1, len(written)):.0f} / "
            f"max {max(written, default=0)}); Feishu calls {dict(by_endpoint)}, {rate_limited} rate-limited; "
            f"statuses {dict(statuses)}"
        )

    # every check runs, so a failure shows the whole picture (a wedged service and duplicate rows, say)
    errors: list[str] = []
    five_xx = {status: n for status, n in statuses.items() if status is not None and status >= 500}
    if five_xx:
        errors.append(f"5xx answers {five_xx}")
    if verdict.failures:
        errors.append(f"{len(verdict.failures)} failed requests, e.g. {verdict.failures[:3]}")
    if verdict.problems:
        errors.append(f"{len(verdict.problems)} inconsistencies in 200 answers, e.g. {verdict.problems[:5]}")
    if len(log) < CLIENTS or len(verdict.sent) < POOL // 2 or payloads < 2 * len(verdict.sent):
        errors.append(f"the load did not run as meant: {len(log)} requests, {len(verdict.sent)} distinct tasks sent")

    stored = Counter(plain(fields.get("Identifier")) for fields in rows.values())
    twice = {ident: n for ident, n in stored.items() if n > 1}
    if twice:
        extra = sum(twice.values()) - len(twice)
        errors.append(f"{len(twice)} identifiers stored more than once ({extra} extra rows of {len(rows)})")
    if set(stored) != verdict.sent:
        errors.append(
            f"{len(verdict.sent - set(stored))} tasks sent but not stored, {len(set(stored) - verdict.sent)} stored "
            "but never sent"
        )
    if set(verdict.created) != verdict.sent:
        errors.append(f"{len(verdict.sent - set(verdict.created))} tasks sent but never answered `created`")
    created_twice = {ident: n for ident, n in verdict.created.items() if n > 1}
    if created_twice:
        errors.append(f"{len(created_twice)} tasks answered `created` more than once")

    canonical_of = dict(zip(pool.identifier, pool.canonical, strict=True))
    by_identifier = {plain(fields.get("Identifier")): (rid, fields) for rid, fields in rows.items()}
    wrong_id = [i for i, (rid, _) in by_identifier.items() if verdict.record_ids.get(i, rid) != rid]
    if wrong_id:
        errors.append(f"{len(wrong_id)} tasks answered with a record id other than their row's, e.g. {wrong_id[:3]}")
    wrong_row = [
        rid
        for ident, (rid, fields) in by_identifier.items()
        if plain(fields.get("Status")) != "PENDING" or plain(fields.get("Payload")) != canonical_of.get(ident)
    ]
    if wrong_row:
        errors.append(f"{len(wrong_row)} rows not PENDING with the canonical payload, e.g. {wrong_row[:3]}")
    assert not errors, "\n".join(errors)
