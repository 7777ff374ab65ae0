"""The task pool's port: what every store (Bitable, SQLite) offers the service."""

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from app.models import (
    NO_FILTER,
    Added,
    Backlog,
    Counts,
    FeishuUsage,
    NewTask,
    StatusChange,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
)


class TaskStore(Protocol):
    """The task pool. Adapters raise only `app.errors` types; nothing vendor-shaped leaves them."""

    async def open(self) -> None:
        """Connect, check the schema, and make the identifier index complete."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise StoreUnavailable/StoreRejected unless the store answers (Bitable: token and table access)."""

    async def add(self, tasks: Sequence[NewTask]) -> Added:
        """Store the tasks whose identifiers were never seen; one `Stored` per task, in order.

        Dedup is atomic across concurrent calls. An unreachable store is answered, not raised: `Added.error`
        says why, and `Added.stored` holds only the entries that are certain, so the caller can say what landed.
        """

    async def lookup(self, identifiers: Sequence[str]) -> dict[str, str | None]:
        """Identifier → record id (None once pruned) for the identifiers already seen."""

    async def get(self, record_ids: Sequence[str]) -> dict[str, TaskRecord]:
        """The records that exist, by record id."""

    async def update(self, changes: Sequence[StatusChange]) -> list[str]:
        """Apply the changes whose record exists; answer the record ids that do not (or, for a change with
        `if_still`, are no longer in that status)."""

    async def set_priority(self, record_id: str, priority: int) -> TaskRecord | None:
        """Write the priority of a task still PENDING, checked and written in one step, nothing else of it; answer
        the task as it now is (unchanged when it is not PENDING), None when there is none.

        Only the priority is written, so a claim landing meanwhile from another process is never undone.
        """

    async def report(self, changes: Sequence[StatusChange]) -> list[str]:
        """Accept workers' reports; answer the record ids that do not exist.

        Accepted means durable: applied in the order accepted (Bitable: within STATUS_FLUSH_SECONDS), and every
        read of this store sees them at once.
        """

    async def counts(self) -> Counts:
        """Tasks per status and the newest FAILED (Bitable: cached for STATS_CACHE_SECONDS, counted by one caller at
        a time)."""

    def backlog(self) -> Backlog | None:
        """Reports accepted and not yet written; None for a store that writes them at once."""

    def feishu_usage(self) -> FeishuUsage | None:
        """This process's Bitable calls per endpoint; None for a store that makes none."""

    async def page(
        self, status: TaskStatus | None, limit: int, page_token: str | None, where: TaskFilter = NO_FILTER
    ) -> TaskPage:
        """A page of tasks in creation order; `total` counts every task with that status that `where` matches.

        Bitable filters created-at by whole days and drops the rest after reading: such a page may hold fewer
        than `limit` (even none) while `next_page_token` says more follow, and its `total` is None (unknown).
        """

    async def pending(self, limit: int) -> list[TaskRecord]:
        """Up to `limit` PENDING tasks, highest Priority first, then oldest."""

    async def processing(self, claimed_on_or_before: datetime) -> list[TaskRecord]:
        """PROCESSING tasks claimed no later than that day (may include later ones: compare exactly)."""

    @property
    def supports_leases(self) -> bool:
        """Whether claims record ClaimedAt and Attempts (Bitable: the optional columns exist)."""

    async def prune(self, status: TaskStatus, created_before: datetime, *, dry_run: bool = False) -> int:
        """Delete finished tasks created before then; their identifiers stay duplicates. Answer how many went
        (with dry_run, how many would go, deleting nothing)."""

    async def reindex(self) -> int:
        """Rebuild the identifier index from the pool; answer how many identifiers it holds."""
