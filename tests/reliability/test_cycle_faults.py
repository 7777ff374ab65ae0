"""Feishu or the bot down during a replenish cycle: nothing claimed, or the claims undone; a dead bot stops nothing.

Guarantees proved, on the Bitable store (the Feishu emulator, through the real SDK) with real RabbitMQ (behind the
loopback proxy where the publish must fail):

(a) Feishu refuses the claim write for good: the cycle reports failed, no message is sent, no row is PROCESSING;
    the journal keeps the attempted claims, and once Feishu is back a cycle publishes every task once.
(b) The claim write lands but its answer is lost, then Feishu stays down: the rows are PROCESSING without a
    message, held in the journal; the next cycle once Feishu is back (or `settle_claims()` at a restart on the same
    DATA_DIR, which keeps them while Feishu is still down) puts them back to PENDING before it claims anything,
    and then publishes each once: at the end no row is PROCESSING without a message.
(c) A publish fails (the broker connection is cut) and the put-back of the unsent rows fails too (Feishu goes down
    at the same instant): the journal keeps the unsent claims, and the next cycle puts exactly those back and
    sends them, so every task ends with a message (and the one message in flight at the cut, twice).
(d) The bot down (5xx, a dropped connection, nothing listening): the cycle still completes and publishes
    everything, and the failed notification is logged as a warning.
(e) Feishu answers HTTP 200 with a transient code (1254002 on a claim that landed, 1255001-1255005 on reads and
    writes that did not), reads meet writes (read conflicts on), a token is refused, and stale leases are due:
    the cycles still publish every task once, and no row ends PROCESSING without a message.
(f) The tenant's monthly quota is used up (99991403): the cycle fails at once with a red card that says so,
    retries nothing, and claims nothing.

Sizes: 60 tasks, 1,000 with RELIABILITY_FULL=1.
"""

import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from app.broker import CeleryPublisher
from app.claims import ClaimJournal
from app.errors import StoreUnavailable
from app.main import Services, wire
from app.models import ReplenishReport, StatusChange, TaskStatus
from app.notify import FeishuBot
from app.service import TaskService
from app.store.bitable import BitableTaskStore
from app.store.timestamps import from_ms
from tests.support.brokers import declare_workers_queue, passive_declare, workers_queue
from tests.support.feishu import APP_TOKEN, TABLE_ID
from tests.support.modes import size
from tests.support.processes import free_port
from tests.support.settings import bitable_settings
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker

N = size(small=60, full=1_000)
HOOK = "hook"


@dataclass
class Stack:
    services: Services
    journal: ClaimJournal
    closers: list[Callable[[], Any]] = field(default_factory=list)
    closed: bool = False

    async def close(self) -> None:
        """What a process exit does to the service's adapters; the journal file and the index stay on disk."""
        if self.closed:
            return
        self.closed = True
        for close in reversed(self.closers):
            result = close()
            if result is not None:
                await result


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy() as running:
        yield running


@pytest.fixture
async def make_stack(feishu, tmp_path: Path, rabbit_url: str, queue_name: str) -> AsyncIterator[Callable]:
    """Builds the services (Bitable store, CeleryPublisher, FeishuBot, journal) on one DATA_DIR; a second one
    built on the same DATA_DIR is the service after a restart."""
    declare_workers_queue(rabbit_url, queue_name, 10)  # the workers' app owns the queue
    feishu.add_bot(HOOK)
    stacks: list[Stack] = []

    async def build(broker_url: str = rabbit_url, webhook: str | None = None, batch: int = N) -> Stack:
        settings = bitable_settings(
            feishu,
            tmp_path / "data",
            celery_broker_url=broker_url,
            celery_queue=queue_name,
            broker_timeout_seconds=2,
            replenish_batch_size=batch,
            feishu_robot_webhook_url=webhook or f"{feishu.url}/open-apis/bot/v2/hook/{HOOK}",
        )
        store = BitableTaskStore.from_settings(settings)
        await store.open()
        publisher = CeleryPublisher(settings)
        bot = FeishuBot(settings.feishu_robot_webhook_url, timeout=5)
        journal = ClaimJournal(settings.data_dir / "claims.db")
        journal.open()
        services = wire(store, settings, publisher=publisher, notifier=bot, journal=journal)
        stacks.append(Stack(services, journal, [store.close, publisher.close, bot.close, journal.close]))
        return stacks[-1]

    yield build
    for stack in stacks:
        await stack.close()


def rows(feishu) -> dict[str, tuple[str, int]]:
    """record id → (Status, Attempts), read from the emulator's table behind the service's back."""
    return {
        rid: (fields["Status"], int(fields.get("Attempts") or 0))
        for rid, fields in feishu.rows(APP_TOKEN, TABLE_ID).items()
    }


def with_status(feishu, status: str) -> set[str]:
    return {rid for rid, (current, _) in rows(feishu).items() if current == status}


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


async def ingest(service: TaskService) -> set[str]:
    response = await service.ingest_tasks([{"n": n} for n in range(N)])
    assert response.created == N
    return {item.record_id for item in response.items}


def card_colours(feishu) -> list[str]:
    return [card["card"]["header"]["template"] for card in feishu.bot_messages(HOOK)]


def assert_published_once_each(report: ReplenishReport, feishu, messages: Counter[str], everyone: set[str]) -> None:
    assert (report.outcome, report.claimed, report.published, report.failed) == ("published", N, N, 0)
    assert with_status(feishu, "PROCESSING") == everyone
    assert messages == Counter(everyone)


# ---- (a) the claim refused -------------------------------------------------------------------------------------


async def test_feishu_refusing_the_claim_publishes_nothing_and_leaves_nothing_processing(
    make_stack, feishu, rabbit_url, queue_name
):
    stack = await make_stack()
    everyone = await ingest(stack.services.tasks)
    feishu.add_fault("server_error", "batch_update")  # no `times`: Feishu stays down

    for _ in range(2):  # the cycle, and the next one while Feishu is still down
        report = await stack.services.cycle.run()
        assert report.outcome == "failed" and "batch_update" in report.error
        assert (report.claimed, report.published) == (0, 0)
        assert passive_declare(rabbit_url, queue_name)[0] == 0  # no message
        assert with_status(feishu, "PENDING") == everyone  # nothing claimed, so nothing PROCESSING
        # the journal keeps the claims it could not settle (the next cycle looks them up before anything else)
        claims = stack.journal.unsettled()
        assert {c.record_id for c in claims} == everyone and not any(c.published for c in claims)
        assert card_colours(feishu)[-1] == "red"

    feishu.clear_faults()
    report = await stack.services.cycle.run()
    messages = take_messages(rabbit_url, queue_name, must_include=everyone)
    assert_published_once_each(report, feishu, messages, everyone)
    assert stack.journal.unsettled() == []
    assert all(attempts == 1 for _, attempts in rows(feishu).values())


# ---- (b) the claim landed, its answer lost ---------------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["next_cycle", "restart"])
async def test_a_claim_whose_answer_was_lost_is_put_back_before_anything_else(
    make_stack, feishu, rabbit_url, queue_name, caplog, recovery
):
    stack = await make_stack()
    everyone = await ingest(stack.services.tasks)
    feishu.add_fault("lost_answer", "batch_update", times=1)  # the claim is applied, its answer never comes
    feishu.add_fault("server_error", "batch_update")  # and every retry fails: Feishu is down

    report = await stack.services.cycle.run()
    assert report.outcome == "failed" and "batch_update" in report.error
    # the window the journal covers: every row PROCESSING, no message, every claim held as unpublished
    assert with_status(feishu, "PROCESSING") == everyone
    assert passive_declare(rabbit_url, queue_name)[0] == 0
    claims = stack.journal.unsettled()
    assert {c.record_id for c in claims} == everyone and not any(c.published for c in claims)

    caplog.set_level(logging.WARNING, logger="app.dispatch")
    if recovery == "next_cycle":
        current = stack
        feishu.clear_faults()
    else:
        await stack.close()  # the process goes away; the journal file stays in DATA_DIR
        restarted = await make_stack()
        current = restarted
        # start-up settles first; Feishu is still down, so the put-back fails and the journal keeps every claim
        with pytest.raises(StoreUnavailable):
            await current.services.dispatcher.settle_claims()
        assert {c.record_id for c in restarted.journal.unsettled()} == everyone
        assert with_status(feishu, "PROCESSING") == everyone
        feishu.clear_faults()
        assert await current.services.dispatcher.settle_claims() == N  # what start-up does once Feishu answers
        assert rows(feishu) == dict.fromkeys(everyone, ("PENDING", 0))  # the claim undone, its attempt too
        assert restarted.journal.unsettled() == []

    report = await current.services.cycle.run()
    messages = take_messages(rabbit_url, queue_name, must_include=everyone)
    assert_published_once_each(report, feishu, messages, everyone)
    assert all(attempts == 1 for _, attempts in rows(feishu).values())  # put back before the new claim
    assert current.journal.unsettled() == []
    assert any(f"put {N} claimed-but-unpublished tasks back to PENDING" in r.getMessage() for r in caplog.records)


# ---- (c) the publish fails, and so does the put-back ------------------------------------------------------------


async def test_a_failed_put_back_after_a_failed_publish_is_settled_by_the_next_cycle(
    make_stack, feishu, proxy, rabbit_url, queue_name
):
    stack = await make_stack(broker_url=proxy.amqp_url())
    everyone = await ingest(stack.services.tasks)
    half = N // 2
    # the connection goes after the half-th message reached the broker (its confirm never comes back), and
    # Feishu goes down at that same instant: the claim has landed, the put-back of the unsent rows cannot
    proxy.on_cut = lambda: feishu.add_fault("server_error", "batch_update")
    proxy.cut_after(messages_client_to_server=half)

    report = await stack.services.cycle.run()
    assert proxy.cuts == 1 and proxy.messages_at_cut == half
    proxy.wait_settled()
    first = take_messages(rabbit_url, queue_name, must_include=set())
    assert sum(first.values()) == half  # half-1 confirmed, and the one in flight
    # the window: rows PROCESSING without a message; the journal holds each of them as an unpublished claim
    processing = with_status(feishu, "PROCESSING")
    assert processing == everyone
    claims = stack.journal.unsettled()
    unpublished = {c.record_id for c in claims if not c.published}
    assert processing - first.keys() <= unpublished, "PROCESSING rows without a message that nothing will settle"
    assert {c.record_id for c in claims} == unpublished  # the published ones are settled already
    assert len(unpublished) == N - half + 1  # the one in flight was never confirmed: unpublished for us
    assert report.outcome == "failed" and "batch_update" in report.error

    proxy.heal()
    feishu.clear_faults()
    report = await stack.services.cycle.run()
    assert (report.outcome, report.claimed, report.published, report.failed) == ("published",) + (
        len(unpublished),
    ) * 2 + (0,)
    second = take_messages(rabbit_url, queue_name, must_include=unpublished)
    total = first + second
    assert with_status(feishu, "PROCESSING") == everyone
    assert total.keys() == everyone  # every task has a message …
    in_flight = first.keys() & unpublished
    assert len(in_flight) == 1 and {rid for rid, count in total.items() if count > 1} == in_flight  # … one has two
    assert stack.journal.unsettled() == []


async def test_a_cycle_whose_put_back_fails_still_reports_what_it_published(make_stack, feishu, proxy):
    stack = await make_stack(broker_url=proxy.amqp_url())
    await ingest(stack.services.tasks)
    half = N // 2
    proxy.on_cut = lambda: feishu.add_fault("server_error", "batch_update")
    proxy.cut_after(messages_client_to_server=half)
    report = await stack.services.cycle.run()
    assert report.outcome == "failed"
    assert (report.claimed, report.published, report.failed) == (N, half - 1, N - half + 1)


# ---- (d) the bot down ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bot", ["server_error", "dropped_connection", "nothing_listening"])
async def test_a_dead_bot_does_not_stop_the_cycle(make_stack, feishu, rabbit_url, queue_name, caplog, bot):
    if bot == "nothing_listening":
        stack = await make_stack(webhook=f"http://127.0.0.1:{free_port()}/open-apis/bot/v2/hook/{HOOK}")
    else:
        stack = await make_stack()
        feishu.add_fault("server_error" if bot == "server_error" else "lost_answer", "bot")
    everyone = await ingest(stack.services.tasks)
    caplog.set_level(logging.WARNING, logger="app.notify")

    started = time.perf_counter()
    report = await stack.services.cycle.run()
    elapsed = time.perf_counter() - started

    messages = take_messages(rabbit_url, queue_name, must_include=everyone)
    assert_published_once_each(report, feishu, messages, everyone)
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.notify" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not sent" in warnings[0], warnings
    assert HOOK not in warnings[0]  # the webhook token stays out of the log
    assert elapsed < 5  # no bot timeout was waited out


# ---- (e) HTTP-200 transient codes, read conflicts and due leases -------------------------------------------------


async def test_http_200_transient_codes_and_read_conflicts_still_publish_each_task_once(
    make_stack, feishu, rabbit_url, queue_name
):
    stack = await make_stack()
    everyone = await ingest(stack.services.tasks)
    # a quarter of the tasks claimed three days ago whose message was lost: lease recovery puts them back
    stale = sorted(everyone)[: N // 4]
    claimed_long_ago = int((time.time() - 3 * 86_400) * 1000)
    await stack.services.tasks.store.update(
        [StatusChange(rid, TaskStatus.PROCESSING, claimed_at=from_ms(claimed_long_ago), attempts=1) for rid in stale]
    )
    feishu.read_conflicts = True
    feishu.add_fault("failed", "batch_update", times=1, landed=True)  # the claim lands, answered 200 + 1254002
    feishu.add_fault("1255003", "search", times=1)
    feishu.add_fault("failed", "search", times=1)
    feishu.add_fault("1255001", "batch_update", times=1)
    feishu.add_fault("99991668", "search", times=1)

    reports = [await stack.services.cycle.run() for _ in range(2)]  # the second picks up the leases put back
    messages = take_messages(rabbit_url, queue_name, must_include=everyone)
    assert [r.outcome for r in reports] == ["published", "published"], [r.error for r in reports]
    assert reports[0].lease_requeued == len(stale)
    assert sum(r.published for r in reports) == N
    assert messages == Counter(everyone)  # each once
    assert with_status(feishu, "PROCESSING") == everyone == set(messages)  # none PROCESSING without a message
    assert stack.journal.unsettled() == []
    assert feishu.count(code=1254291) == 0  # our reads waited for our writes
    for code in (1254002, 1255003, 1255001, 99991668):
        assert feishu.count(code=code) >= 1, code


# ---- (f) the monthly quota used up -----------------------------------------------------------------------------


async def test_an_exhausted_quota_fails_the_cycle_with_a_red_card_that_says_so(
    make_stack, feishu, rabbit_url, queue_name
):
    stack = await make_stack()
    everyone = await ingest(stack.services.tasks)
    feishu.monthly_quota = 0
    feishu.reset_calls()
    report = await stack.services.cycle.run()
    assert report.outcome == "failed" and "quota for this tenant is used up" in report.error
    assert (report.claimed, report.published) == (0, 0)
    # each read tried once, none retried: the cycle's reads and nothing else
    assert feishu.count("search") == feishu.count("search", code=99991403) <= 3
    assert feishu.count("batch_update") == 0
    (card,) = feishu.bot_messages(HOOK)
    assert card["card"]["header"]["template"] == "red"
    assert "quota for this tenant is used up" in json.dumps(card, ensure_ascii=False)
    assert passive_declare(rabbit_url, queue_name)[0] == 0
    assert with_status(feishu, "PENDING") == everyone
