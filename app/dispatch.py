"""Claim, publish, put back: a row is never PROCESSING without its message; used by the cycle and the priority push."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.broker import Message, Publisher
from app.claims import ClaimJournal
from app.config import Settings
from app.errors import BrokerUnavailable, InvalidInput, QueueMissing, ServiceError
from app.identity import task_identifier
from app.metrics import MESSAGES_PUBLISHED
from app.models import StatusChange, TaskRecord, TaskStatus, utc_now
from app.store.base import TaskStore

log = logging.getLogger(__name__)


class PriorityClass(StrEnum):
    """Which of CELERY_DEFAULT_PRIORITY / CELERY_HIGH_PRIORITY a message goes out at; also the metric's label."""

    DEFAULT = "default"  # the replenish cycle
    HIGH = "high"  # the priority push


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What went out and what did not (back to PENDING, or held in the journal when the put-back failed too)."""

    sent: list[TaskRecord] = field(default_factory=list)
    unsent: list[TaskRecord] = field(default_factory=list)
    error: ServiceError | None = None  # why `unsent` did not go out, or could not be put back


class Dispatcher:
    """Claims rows in one batch write, publishes them over one producer, and puts back what did not go out."""

    def __init__(
        self,
        store: TaskStore,
        publisher: Publisher,
        journal: ClaimJournal,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._publisher = publisher
        self._journal = journal
        self._settings = settings
        self._clock = clock
        # held from reading the rows to claim until they are dispatched: no row is claimed twice in this process
        self.claiming = asyncio.Lock()

    async def dispatch(self, records: list[TaskRecord], priority: PriorityClass) -> Dispatched:
        """Claim, publish and put back, in that order; the caller holds `claiming`."""
        if not records:
            return Dispatched()
        claimed = await self.claim(records)
        return await self.put_back(await self.publish(claimed, priority))

    async def claim(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """PROCESSING, ClaimedAt and Attempts + 1, journaled first; answers the rows that still existed."""
        now = self._clock()
        self._journal.begin([(r.record_id, r.attempts) for r in records])
        claims = [
            StatusChange(
                r.record_id,
                TaskStatus.PROCESSING,
                claimed_at=now,
                attempts=r.attempts + 1,
                identifier=None if r.identifier else self._identify(r.payload),
            )
            for r in records
        ]
        # a failure here leaves the journal entries: the next cycle settles whatever landed
        missing = set(await self._store.update(claims))
        self._journal.settle(missing)
        return [r for r in records if r.record_id not in missing]

    async def publish(self, claimed: list[TaskRecord], priority: PriorityClass) -> Dispatched:
        """Send the claimed rows' messages; a missing queue or a broker down leaves them all unsent."""
        number = self._settings.priorities[0 if priority is PriorityClass.DEFAULT else 1]
        try:
            failed = set(await self._publisher.publish([Message(r.record_id, r.payload) for r in claimed], number))
            error = None
        except (QueueMissing, BrokerUnavailable) as exc:
            failed, error = {r.record_id for r in claimed}, exc
        sent = [r for r in claimed if r.record_id not in failed]
        unsent = [r for r in claimed if r.record_id in failed]
        MESSAGES_PUBLISHED.labels(priority.value, "sent").inc(len(sent))
        MESSAGES_PUBLISHED.labels(priority.value, "failed").inc(len(unsent))
        self._journal.mark_published(r.record_id for r in sent)
        return Dispatched(sent, unsent, error)

    async def put_back(self, published: Dispatched) -> Dispatched:
        """The unsent rows back to PENDING with their attempts; the journal is settled for whatever is done."""
        if published.unsent:
            back = [StatusChange(r.record_id, TaskStatus.PENDING, attempts=r.attempts) for r in published.unsent]
            try:
                await self._store.update(back)
            except ServiceError as exc:  # the journal keeps the unsent ones: the next cycle puts them back
                self._journal.settle(r.record_id for r in published.sent)
                log.warning("putting %d unsent tasks back failed: %s", len(published.unsent), exc.detail)
                return Dispatched(published.sent, published.unsent, published.error or exc)  # the cause keeps its code
        self._journal.settle(r.record_id for r in [*published.sent, *published.unsent])
        return published

    async def settle_claims(self) -> int:
        """Undo claims a crash or an outage left between claim and publish; answer how many were put back."""
        async with self.claiming:
            claims = self._journal.settleable()
            if not claims:
                return 0
            unpublished = {c.record_id: c for c in claims if not c.published}
            current = await self._store.get(list(unpublished))
            # a report that finished the task since it was read is not undone
            back = [
                StatusChange(record_id, TaskStatus.PENDING, attempts=claim.attempts, if_still=TaskStatus.PROCESSING)
                for record_id, claim in unpublished.items()
                if record_id in current and current[record_id].status is TaskStatus.PROCESSING
            ]
            put_back = len(back) - len(await self._store.update(back)) if back else 0
            self._journal.settle(c.record_id for c in claims)
            if put_back:
                log.warning("put %d claimed-but-unpublished tasks back to PENDING", put_back)
            return put_back

    def _identify(self, payload: dict[str, Any]) -> str | None:
        try:
            return task_identifier(payload, self._settings.dedup_keys)
        except InvalidInput:
            return None
