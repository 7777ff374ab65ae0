"""The broker connection cut in the middle of a replenish cycle: no row is ever PROCESSING without a message.

Guarantee proved, on the SQLite store and on Bitable (the Feishu emulator), with real RabbitMQ behind a loopback
proxy (`tcp_proxy.TcpProxy`) that cuts the publisher's connection at a fixed point of the byte stream:

- every PROCESSING row's record id has a message on the queue (at-least-once), right after the cut and after
  the next cycle;
- the cycle accounts for every claim: published + failed == claimed, PROCESSING rows == published, and the rows
  of the failed publishes are PENDING again (their attempt count restored), with nothing left in the journal;
- the price of a cut is bounded: at most one message was sent but its row put back to PENDING (a duplicate a
  worker may see). Publisher confirms are synchronous (py-amqp waits for each ack before the next publish) over
  one producer, the batch stops at the first error, and the proxy refuses kombu's reconnects until healed, so
  only the one publish in flight can have reached the broker unconfirmed;
- once the broker is back, the next cycle publishes the rest: every task has at least one message, and the only
  record ids with two are those sent-but-reverted ones.

Cut points: fixed byte thresholds counted from the start of the cycle (early: a few messages in; middle; late),
which cut inside a message's frames, and a cut right after the last byte of one whole message (before its
confirm), which is exactly the in-flight duplicate. Sizes: 200 tasks, 2,000 with RELIABILITY_FULL=1.
"""

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.exceptions import KombuError

from app.broker import CeleryPublisher
from app.claims import ClaimJournal
from app.main import Services, wire
from app.models import TaskStatus
from app.service import TaskService
from app.store.bitable import BitableTaskStore
from app.store.sqlite import SqliteTaskStore
from tests.support.brokers import declare_workers_queue, passive_declare, workers_queue
from tests.support.fakes import RecordingNotifier
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.modes import size
from tests.support.settings import bitable_settings, make_settings
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker

N = size(small=200, full=2_000)
# ~400 bytes of payload make each message ~1.4 KB upstream (Celery sends the kwargs in the body and again, as a
# repr, in a header), most of it ours rather than Celery's (whose headers carry the host name and pid), so a fixed
# byte threshold falls at about the same message on any machine: 1,368 bytes a message on a 2-letter host name
PAD = "x" * 400
CUT_BYTES = {
    "early": 4_000,  # the third message
    "middle": size(small=137_000, full=1_370_000),  # half way
    "late": size(small=240_000, full=2_400_000),  # 7/8 of the way
}
# where each cut must fall, as a fraction of the batch: the test checks it cut where its name says
EXPECTED_AT = {"early": (0.0, 0.1), "middle": (0.3, 0.7), "late": (0.75, 1.0), "after_a_whole_message": (0.5, 0.5)}
DUPLICATES_PER_CUT = 1  # the one publish in flight (see the module docstring)
BROKEN = (OSError, KombuError, *Connection("amqp://").connection_errors)  # what a cut connection raises


def payloads(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"n": n, "pad": PAD} for n in range(start, stop)]


@dataclass
class Stack:
    services: Services
    journal: ClaimJournal
    notifier: RecordingNotifier
    rows: Callable[[], dict[str, tuple[str, int]]]  # record id → (status, attempts), read behind the service

    def by_status(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {status.value: set() for status in TaskStatus}
        for record_id, (status, _) in self.rows().items():
            found[status].add(record_id)
        return found


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy() as running:
        yield running


@pytest.fixture(params=["sqlite", "bitable"])
async def stack(request, tmp_path: Path, rabbit_url: str, queue_name: str, proxy: TcpProxy) -> AsyncIterator[Stack]:
    """The services on a real store, publishing through the proxy to a queue the workers declared on RabbitMQ."""
    declare_workers_queue(rabbit_url, queue_name, 10)
    data_dir = tmp_path / "data"
    broker = {
        "celery_broker_url": proxy.amqp_url(),
        "celery_queue": queue_name,
        "broker_timeout_seconds": 2,
        "replenish_batch_size": N,
    }
    if request.param == "sqlite":
        settings = make_settings(data_dir, **broker)
        store = SqliteTaskStore(data_dir / "tasks.db")
        rows = _sqlite_rows(data_dir / "tasks.db")
    else:
        feishu = request.getfixturevalue("feishu")
        settings = bitable_settings(feishu, data_dir, **broker)
        store = BitableTaskStore.from_settings(settings)
        rows = _bitable_rows(feishu)
    await store.open()
    publisher = CeleryPublisher(settings)
    journal = ClaimJournal(data_dir / "claims.db")
    journal.open()
    notifier = RecordingNotifier()
    services = wire(store, settings, publisher=publisher, notifier=notifier, journal=journal)
    yield Stack(services, journal, notifier, rows)
    proxy.resume()
    proxy.heal()  # let the publisher close its connection cleanly
    journal.close()
    await publisher.close()
    await store.close()


def _sqlite_rows(path: Path) -> Callable[[], dict[str, tuple[str, int]]]:
    def read() -> dict[str, tuple[str, int]]:
        with sqlite3.connect(path) as db:
            return {
                rid: (status, attempts)
                for rid, status, attempts in db.execute("SELECT record_id, status, attempts FROM tasks")
            }

    return read


def _bitable_rows(feishu) -> Callable[[], dict[str, tuple[str, int]]]:
    def read() -> dict[str, tuple[str, int]]:
        return {
            rid: (fields["Status"], int(fields.get("Attempts") or 0))
            for rid, fields in feishu.rows(APP_TOKEN, TABLE_ID).items()
        }

    return read


def take_messages(url: str, queue: str, must_include: set[str], timeout: float = 10) -> Counter[str]:
    """Take every message off the queue (no ack), by record id; poll until `must_include` have all come or the
    deadline passes (a confirmed message is already there; the poll only covers the broker's own hand-off)."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=3) as conn:
        bound = workers_queue(queue, None)(conn.channel())
        while True:
            message = bound.get(no_ack=True)
            if message is not None:
                seen[message.headers["id"]] += 1
            elif must_include <= seen.keys() or time.monotonic() > deadline:
                return seen
            else:
                time.sleep(0.02)  # bounded poll for an outside effect, not a wait for the code under test


async def ingest(service: TaskService, count: int = N) -> None:
    for start in range(0, count, 1_000):
        response = await service.ingest_tasks(payloads(start, min(count, start + 1_000)))
        assert response.created == min(count, start + 1_000) - start


def arm(proxy: TcpProxy, cut: str) -> None:
    if cut == "after_a_whole_message":
        proxy.cut_after(messages_client_to_server=N // 2)
    else:
        proxy.cut_after(bytes_client_to_server=CUT_BYTES[cut])


@pytest.mark.parametrize("cut", ["early", "middle", "late", "after_a_whole_message"])
async def test_a_cut_mid_publish_leaves_no_row_processing_without_a_message(
    stack: Stack, proxy: TcpProxy, rabbit_url: str, queue_name: str, cut: str, request
):
    service, cycle = stack.services.tasks, stack.services.cycle
    await ingest(service, N)
    everyone = set(stack.rows())
    assert len(everyone) == N

    arm(proxy, cut)
    started = time.perf_counter()
    report = await cycle.run()
    cycle_seconds = time.perf_counter() - started

    # the cut fell where its name says, while the batch was being published
    assert proxy.cuts == 1, f"the cut never fell: the cycle sent {proxy.bytes_up:,} bytes upstream"
    low, high = EXPECTED_AT[cut]
    assert low * N <= proxy.publishes_at_cut <= max(high * N, 1), (proxy.publishes_at_cut, N)
    assert 1 <= proxy.publishes_at_cut <= N
    proxy.wait_settled()  # the broker has read every byte that went through before the cut

    rows = stack.by_status()
    processing, pending = rows["PROCESSING"], rows["PENDING"]
    first = take_messages(rabbit_url, queue_name, must_include=processing)

    # at-least-once: every PROCESSING row has its message
    assert processing <= first.keys(), f"{len(processing - first.keys())} PROCESSING rows have no message"
    # the cycle accounts for every claim, and put back every failed publish
    assert report.claimed == N
    assert report.published + report.failed == report.claimed
    assert len(processing) == report.published
    assert len(pending) == report.failed and processing | pending == everyone
    assert all(attempts == 0 for rid, (_, attempts) in stack.rows().items() if rid in pending)
    assert stack.journal.unsettled() == []
    # the broker stayed down, so the cycle reports the failure, with the counts
    assert report.outcome == "failed" and report.error
    assert stack.notifier.notices[-1].title == "Replenish failed"
    # the price: messages whose rows went back to PENDING, which the next cycle sends again
    assert set(first.values()) == {1} and first.keys() <= everyone
    sent_but_reverted = first.keys() & pending
    assert len(sent_but_reverted) <= DUPLICATES_PER_CUT
    if cut == "after_a_whole_message":  # the broker has the whole message, the client never saw its confirm
        assert len(sent_but_reverted) == 1

    # the broker comes back: the next cycle sends what was put back, and nothing is PROCESSING without a message
    proxy.heal()
    started = time.perf_counter()
    again = await cycle.run()
    heal_seconds = time.perf_counter() - started
    assert (again.outcome, again.claimed, again.published, again.failed) == ("published", len(pending), len(pending), 0)
    second = take_messages(rabbit_url, queue_name, must_include=pending)
    total = first + second
    rows = stack.by_status()
    assert rows["PROCESSING"] == everyone
    assert total.keys() == everyone  # every task has at least one message …
    assert sum(total.values()) == N + len(sent_but_reverted)  # … and only the sent-but-reverted ones have two
    assert {rid for rid, count in total.items() if count > 1} == sent_but_reverted
    assert all(attempts == 1 for _, attempts in stack.rows().values())  # a put-back claim costs no attempt
    assert stack.journal.unsettled() == []
    assert passive_declare(rabbit_url, queue_name)[0] == 0

    line = (
        f"{request.node.callspec.id}: N={N} cut at publish #{proxy.publishes_at_cut} "
        f"({proxy.messages_at_cut} whole messages through) published={report.published} failed={report.failed} "
        f"sent-but-reverted={len(sent_but_reverted)} cut cycle {cycle_seconds:.2f}s, next cycle {heal_seconds:.2f}s"
    )
    print(line)


async def test_the_proxy_forwards_counts_cuts_and_heals(rabbit_url: str, queue_name: str, proxy: TcpProxy):
    """The tool itself: traffic goes through and is counted; a cut closes live connections and refuses new ones."""
    declare_workers_queue(rabbit_url, queue_name, 10)
    url = proxy.amqp_url()
    assert passive_declare(url, queue_name) == (0, 0)
    assert proxy.accepted == 1 and proxy.bytes_up > 8 and proxy.bytes_down > 0
    with Connection(url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
        assert proxy.live_connections >= 1
        proxy.cut()
        assert proxy.live_connections == 0
        with pytest.raises(BROKEN):
            conn.default_channel.queue_declare(queue=queue_name, passive=True)
    with pytest.raises(BROKEN):  # refused until healed
        passive_declare(url, queue_name)
    assert proxy.refused >= 1
    proxy.wait_settled()
    proxy.heal()
    assert passive_declare(url, queue_name) == (0, 0)
    before = proxy.bytes_up
    proxy.cut_after(bytes_client_to_server=5)  # inside the 8-byte AMQP preamble of the next connection
    with pytest.raises(BROKEN):
        passive_declare(url, queue_name)
    assert (proxy.bytes_up - before, proxy.cuts) == (5, 2)


STALL_BOUND = 15  # seconds: a few BROKER_TIMEOUT_SECONDS (2) for the publish in flight, kombu's retries, the depth


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
async def test_a_broker_that_stops_answering_mid_publish_does_not_hold_the_cycle(
    stack: Stack, proxy: TcpProxy, rabbit_url: str, queue_name: str
):
    """Not a cut: the connection stays open and the broker just stops answering, after half the batch went out."""
    count = 20
    await ingest(stack.services.tasks, count)
    proxy.stall_after(messages_client_to_server=count // 2)
    started = time.perf_counter()
    cycle = asyncio.ensure_future(stack.services.cycle.run())
    done, _ = await asyncio.wait({cycle}, timeout=STALL_BOUND)
    waited = time.perf_counter() - started
    proxy.resume()  # the broker answers again; whatever the cycle still waits for arrives
    report = await cycle

    # whichever way the cycle ended, the guarantee held
    processing = stack.by_status()["PROCESSING"]
    messages = take_messages(rabbit_url, queue_name, must_include=processing)
    assert processing <= messages.keys()
    assert report.published + report.failed == report.claimed == count
    assert len(processing) == report.published
    assert stack.journal.unsettled() == []
    assert done, f"the cycle was still waiting on the broker {waited:.1f}s after it stopped answering"
