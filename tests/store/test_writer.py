"""The single writer on its own, over a table in memory: coalescing, pipelining, turns, close, splits, lookups."""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.errors import StoreRejected, StoreUnavailable
from app.models import Stored
from app.store.feishu import InvalidRows, MaybeApplied
from app.store.index import IdentifierIndex, State
from app.store.writer import BatchWriter, NewRow
from tests.support.fake_table import FakeTable

BOUND = 5  # seconds: a wait that should end at once fails the test instead of hanging it


def ident(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def rows(numbers: Iterable[int], **cells) -> list[NewRow]:
    return [NewRow(ident(n), {"Identifier": ident(n), "n": n, **cells}) for n in numbers]


class ReservingIndex(IdentifierIndex):
    """The real index, telling the test each reservation (the fsynced WRITING mark) as it is made."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.loop = asyncio.get_running_loop()
        self.reservations: asyncio.Queue[list[str]] = asyncio.Queue()

    def mark_writing(self, identifiers: Iterable[str]) -> None:
        identifiers = list(identifiers)
        super().mark_writing(identifiers)
        self.loop.call_soon_threadsafe(self.reservations.put_nowait, identifiers)


@pytest.fixture
async def index(tmp_path) -> AsyncIterator[ReservingIndex]:
    index = ReservingIndex(tmp_path / "index.db")
    index.open()
    yield index
    index.close()


@pytest.fixture
def table() -> FakeTable:
    return FakeTable()


@asynccontextmanager
async def running(table: FakeTable, index: IdentifierIndex, linger: float = 0, max_wait: float = 0.5):
    writer = BatchWriter(table, index, linger_seconds=linger, max_wait_seconds=max_wait)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


def created(results: list) -> bool:
    return all(isinstance(r, Stored) and r.created for r in results)


async def test_concurrent_requests_are_coalesced_into_creates_of_up_to_a_thousand_rows(table, index):
    async with running(table, index, linger=0.01) as writer:
        results = await asyncio.gather(*(writer.submit(rows(range(c * 1_000, c * 1_000 + 500))) for c in range(5)))
    assert all(created(r) for r in results)
    assert [len(c) for c in table.creates()] == [1_000, 1_000, 500]
    assert len(table.rows) == 2_500
    stored = {r.identifier: r.record_id for result in results for r in result}
    assert {i: e.record_id for i, e in index.lookup(list(stored)).items()} == stored  # STORED before the answer
    assert {e.state for e in index.lookup(list(stored)).values()} == {State.STORED}


async def test_the_next_batch_is_reserved_while_one_write_is_in_flight(table, index):
    table.gate = asyncio.Event()
    async with running(table, index) as writer:
        first = asyncio.create_task(writer.submit(rows(range(1_000))))
        second = asyncio.create_task(writer.submit(rows(range(1_000, 2_000))))
        assert await asyncio.wait_for(index.reservations.get(), BOUND) == [ident(n) for n in range(1_000)]
        # the second batch is reserved (its WRITING mark made) while the first create is still held
        assert await asyncio.wait_for(index.reservations.get(), BOUND) == [ident(n) for n in range(1_000, 2_000)]
        assert len(table.creates()) == 1
        table.gate.set()
        assert created(await first) and created(await second)
    assert [len(c) for c in table.creates()] == [1_000, 1_000]
    assert table.most_in_flight == 1


async def test_a_turn_lets_the_rows_already_waiting_go_first(table, index):
    async with running(table, index, linger=0.05) as writer:
        ingest = asyncio.create_task(writer.submit(rows(range(3))))
        await asyncio.sleep(0)  # its rows are queued; the writer lingers for more before it takes them
        async with writer.turn():
            table.log.append(("update", None))
        assert created(await ingest)
    assert [what for what, _ in table.log] == ["create", "update"]


async def test_a_turn_lets_one_waiting_batch_go_first_not_a_stream(table, index):
    table.gate = asyncio.Event()

    async def update() -> None:
        async with writer.turn():
            table.log.append(("update", None))

    async with running(table, index) as writer:
        first = asyncio.create_task(writer.submit(rows(range(1_000))))
        await asyncio.wait_for(table.started.wait(), BOUND)
        second = asyncio.create_task(writer.submit(rows(range(1_000, 2_000))))
        for _ in range(2):
            await asyncio.wait_for(index.reservations.get(), BOUND)  # the first in flight, the second ready
        turn = asyncio.create_task(update())
        await asyncio.sleep(0)  # it waits for the ready batch to start
        third = asyncio.create_task(writer.submit(rows(range(2_000, 3_000))))
        table.gate.set()
        await asyncio.gather(first, second, turn, third)
    assert [(what, ids and ids[0]) for what, ids in table.log] == [
        ("create", ident(0)),
        ("create", ident(1_000)),
        ("update", None),
        ("create", ident(2_000)),
    ]


async def test_an_answered_write_is_not_held_behind_a_turn_waiting_for_the_table(table, index):
    table.gate = asyncio.Event()
    async with running(table, index) as writer:
        first = asyncio.create_task(writer.submit(rows(range(1_000))))
        await asyncio.wait_for(table.started.wait(), BOUND)
        holding = asyncio.Event()
        release = asyncio.Event()

        async def update() -> None:
            async with writer.turn():
                holding.set()
                await release.wait()

        turn = asyncio.create_task(update())
        await asyncio.sleep(0)  # nothing queued: it waits for the table behind the first write
        second = asyncio.create_task(writer.submit(rows(range(1_000, 2_000))))  # ready, behind the turn
        await asyncio.wait_for(index.reservations.get(), BOUND)
        await asyncio.wait_for(index.reservations.get(), BOUND)
        table.gate.set()
        await asyncio.wait_for(holding.wait(), BOUND)
        # the turn holds the table, the second batch waits behind it: the first write's answer does not
        assert created(await asyncio.wait_for(first, BOUND))
        assert len(table.creates()) == 1
        release.set()
        await asyncio.gather(turn, second)
    assert len(table.creates()) == 2


async def test_after_a_stream_of_full_batches_a_lone_request_waits_only_the_linger(table, index):
    table.gate = asyncio.Event()
    async with running(table, index, linger=0.01, max_wait=60) as writer:
        first = asyncio.create_task(writer.submit(rows(range(1_000))))
        await asyncio.wait_for(table.started.wait(), BOUND)
        # a stream: these arrive while a write is in flight, and go as full batches
        stream = [asyncio.create_task(writer.submit(rows(range(r * 1_000, r * 1_000 + 1_000)))) for r in (1, 2)]
        table.gate.set()
        await asyncio.gather(first, *stream)
        # a batch held open for the stream's max_wait would take a minute
        assert created(await asyncio.wait_for(writer.submit(rows([5_000])), BOUND))


async def test_close_answers_the_requests_still_waiting_as_unavailable(table, index):
    table.gate = asyncio.Event()  # never set: the create stays in flight
    async with running(table, index) as writer:
        waiting = asyncio.create_task(writer.submit(rows(range(3))))
        await asyncio.wait_for(table.started.wait(), BOUND)
        queued = asyncio.create_task(writer.submit(rows(range(3, 6))))  # waits for the writer to be free
        await asyncio.sleep(0)
        await writer.close()
        answers = [*await asyncio.wait_for(waiting, BOUND), *await asyncio.wait_for(queued, BOUND)]
    assert all(isinstance(a, StoreUnavailable) and a.status_code == 503 for a in answers)
    assert set(index.writing()) == {ident(n) for n in range(3)}  # reserved, sent: settled at the next start


async def test_a_closed_writer_answers_unavailable_at_once(table, index):
    async with running(table, index) as writer:
        pass
    answers = await asyncio.wait_for(writer.submit(rows(range(2))), BOUND)
    assert all(isinstance(a, StoreUnavailable) and a.status_code == 503 for a in answers)


async def test_a_row_being_written_is_joined_not_written_twice(table, index):
    table.gate = asyncio.Event()
    async with running(table, index) as writer:
        first = asyncio.create_task(writer.submit(rows(range(3))))
        await asyncio.wait_for(table.started.wait(), BOUND)
        joining = asyncio.create_task(writer.submit(rows(range(5))))
        table.gate.set()
        mine, joined = await first, await joining
    assert created(mine)
    assert [r.created for r in joined] == [False, False, False, True, True]
    assert [r.record_id for r in joined[:3]] == [r.record_id for r in mine]
    assert len(table.rows) == 5


async def test_rows_the_table_refuses_fail_only_their_request(table, index):
    def refuse_bad_rows(cells):
        if any(row.get("bad") for row in cells):
            raise InvalidRows("a cell is too large")
        return False

    table.fault = refuse_bad_rows
    async with running(table, index, linger=0.05) as writer:
        good, bad = await asyncio.gather(writer.submit(rows(range(5))), writer.submit(rows([99], bad=True)))
    assert created(good)
    assert isinstance(bad[0], InvalidRows)
    assert [len(c) for c in table.creates()] == [6, 5, 1]  # the batch, then one create per request
    assert ident(99) not in index.lookup([ident(99)])  # refused: certain nothing was written, so not reserved


async def test_a_refusal_of_one_request_alone_is_not_split(table, index):
    def refuse(cells):
        raise InvalidRows("a cell is too large")

    table.fault = refuse
    async with running(table, index) as writer:
        (answer,) = await writer.submit(rows([1]))
    assert isinstance(answer, InvalidRows)
    assert len(table.creates()) == 1


async def test_a_create_whose_answer_says_nothing_is_settled_by_looking_its_rows_up(table, index):
    table.fault = lambda cells: True  # stored, answered as "a reused client_token"
    async with running(table, index) as writer:
        results = await writer.submit(rows(range(4)))
    assert created(results)
    assert {r.record_id for r in results} == set(table.rows)
    assert [what for what, _ in table.log] == ["create", "search"]
    assert {e.state for e in index.lookup([ident(n) for n in range(4)]).values()} == {State.STORED}


async def test_a_lookup_after_a_refusal_answers_what_landed_and_refuses_the_rest(table, index):
    def half_landed(cells):
        table.rows["recLANDED"] = cells[0]  # an earlier try landed this one; the retry was refused
        raise MaybeApplied(StoreRejected("refused after a lost answer"))

    table.fault = half_landed
    async with running(table, index) as writer:
        landed, refused = await writer.submit(rows(range(2)))
    assert landed == Stored(ident(0), "recLANDED", created=True)
    assert isinstance(refused, StoreRejected)


async def test_a_row_an_earlier_write_may_have_stored_is_looked_up_before_it_is_written(table, index):
    table.rows["recOLD"] = {"Identifier": ident(1)}
    index.mark_writing([ident(1), ident(2)])
    async with running(table, index) as writer:  # start settles both: one landed, one forgotten
        assert index.writing() == []
        index.mark_writing([ident(3)])  # as if reserved by a write whose answer is still unknown
        table.rows["recTHREE"] = {"Identifier": ident(3)}
        results = await writer.submit([NewRow(ident(3), {"Identifier": ident(3)}, uncertain=True), *rows([2])])
    assert results == [Stored(ident(3), "recTHREE", created=False), Stored(ident(2), results[1].record_id, True)]
    assert table.creates() == [[ident(2)]]
