"""The service's values: tasks and their changes as dataclasses, request and response schemas as pydantic models."""

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from app.errors import StoreUnavailable
from app.identity import MAX_PAYLOAD_CHARS

RECORD_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # Bitable's record ids and ours; anything else is no record id


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 4x, and ingest builds one per payload
class NewTask:
    """A validated payload on its way into the store."""

    identifier: str
    payload: dict[str, Any]
    canonical: str
    priority: int | None = None
    status: TaskStatus = TaskStatus.PENDING
    claimed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """Where one identifier lives, and whether this call created it."""

    identifier: str
    record_id: str | None  # None: seen before, but its row has since been pruned
    created: bool


@dataclass(frozen=True, slots=True)
class Added:
    """What `TaskStore.add` managed: one `Stored` per task in order; if the store stopped, those certain, and why."""

    stored: list[Stored]
    error: StoreUnavailable | None = None


@dataclass(slots=True)
class TaskRecord:
    record_id: str
    identifier: str | None
    status: TaskStatus | None
    payload: dict[str, Any]
    priority: float | None = None
    created_at: datetime | None = None
    claimed_at: datetime | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None  # what the worker reported with SUCCESS or FAILED
    error: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    record_id: str
    status: TaskStatus
    claimed_at: datetime | None = None  # set on a claim
    attempts: int | None = None  # the new count, on a claim
    identifier: str | None = None  # for a row typed in by hand, written on its first claim
    result: dict[str, Any] | None = None  # a worker's report: its result object, its error text, when it finished
    error: str | None = None
    finished_at: datetime | None = None
    if_still: TaskStatus | None = None  # apply only to a task still in this status (lease recovery)


@dataclass(frozen=True, slots=True)
class Counts:
    """Tasks per status, as counted at `as_of` (a Bitable count is cached: STATS_CACHE_SECONDS)."""

    by_status: dict[str, int]
    as_of: datetime
    recent_failures: tuple[TaskRecord, ...] = ()  # FAILED, newest finished first, read with the counts


@dataclass(frozen=True, slots=True)
class FeishuUsage:
    """One table's Bitable calls (attempts, retries included) since `since`, per endpoint, and those rate-limited."""

    since: datetime
    calls: dict[str, int]
    rate_limited: dict[str, int]


@dataclass(frozen=True, slots=True)
class Backlog:
    """Accepted worker reports not yet written to the table, and those Feishu refused for good (set aside)."""

    depth: int
    oldest_age_seconds: float | None
    refused: int = 0


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What a list or a bulk action narrows to beside the status; every bound given must hold (and).

    Priority bounds are inclusive; `created_after` is inclusive and `created_before` exclusive, so windows tile.
    Moments are whole milliseconds (the stores keep no finer), aware.
    """

    priority: float | None = None
    priority_min: float | None = None
    priority_max: float | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    identifier: str | None = None

    @property
    def created_bounded(self) -> bool:
        return self.created_after is not None or self.created_before is not None

    def matches(self, record: "TaskRecord") -> bool:
        """The exact test, for a store whose search can only narrow to a superset (Bitable compares whole days)."""
        if self.identifier is not None and record.identifier != self.identifier:
            return False
        if self.priority is not None or self.priority_min is not None or self.priority_max is not None:
            value = record.priority
            if value is None:
                return False
            if self.priority is not None and value != self.priority:
                return False
            if self.priority_min is not None and value < self.priority_min:
                return False
            if self.priority_max is not None and value > self.priority_max:
                return False
        if self.created_bounded:
            created = record.created_at
            if created is None:
                return False
            if self.created_after is not None and created < self.created_after:
                return False
            if self.created_before is not None and created >= self.created_before:
                return False
        return True


NO_FILTER = TaskFilter()


@dataclass(slots=True)
class TaskPage:
    items: list[TaskRecord]
    next_page_token: str | None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class PartlyStored:
    """The store stopped a request that stores tasks part way: the error, and per payload what landed."""

    error: StoreUnavailable
    items: list[dict[str, Any]]  # one ItemOutcome per payload, as plain JSON: `not_stored` for what did not land
    stored: int  # distinct tasks stored
    distinct: int

    @property
    def detail(self) -> str:
        return (
            f"{self.error.detail}; {self.stored} of {self.distinct} distinct tasks were stored, "
            "and sending the same request again is safe"
        )


# ---- API schemas -------------------------------------------------------------------------------


class ItemOutcome(BaseModel):
    identifier: str
    record_id: str | None
    outcome: Literal["created", "duplicate", "not_stored", "published", "already_queued", "already_done", "deferred"]


class IngestResponse(BaseModel):
    received: int
    created: int
    duplicates: int
    items: list[ItemOutcome]
    note: str | None = Field(None, description="set when ?priority was not applied to tasks already in the pool")


class PriorityResponse(BaseModel):
    received: int
    published: int
    items: list[ItemOutcome]


class ReplenishReport(BaseModel):
    """What one replenish cycle saw and did; also what the bot is told."""

    outcome: Literal["published", "skipped", "nothing_pending", "dry_run", "busy", "failed"]
    dry_run: bool = False
    started_at: datetime
    finished_at: datetime | None = None
    threshold: int
    depth_before: int | None = None
    depth_after: int | None = None
    claimed: int = 0
    published: int = 0
    failed: int = 0
    pending_left: int | None = None
    lease_requeued: int = 0
    lease_failed: int = 0
    error: str | None = None
    error_code: str | None = Field(
        None, description="what stopped a failed cycle: queue_missing, broker_unavailable, …"
    )


class ErrorOut(BaseModel):
    error: str
    detail: Any


class BacklogOut(BaseModel):
    """Workers' reports accepted and not yet written to the table."""

    model_config = {"from_attributes": True}  # built from the store's Backlog

    depth: int
    oldest_age_seconds: float | None = Field(description="how long the oldest has waited; null when none waits")
    refused: int = Field(0, description="reports Feishu refused even as a bare status, set aside in the outbox")


RECENT_FAILURES = 10  # FAILED tasks /api/stats shows, newest finished first
RECENT_CYCLES = 20  # replenish cycles /api/stats shows, newest first


class FailureOut(BaseModel):
    model_config = {"from_attributes": True}  # built from a TaskRecord

    record_id: str
    identifier: str | None
    error: str | None
    finished_at: datetime | None
    attempts: int


class FeishuUsageOut(BaseModel):
    """The store's Bitable calls since this process opened it (start-up checks aside; the tenant's quota is shared)."""

    model_config = {"from_attributes": True}  # built from the store's FeishuUsage

    since: datetime
    calls: dict[str, int] = Field(description="attempts per endpoint, retries included")
    rate_limited: dict[str, int] = Field(description="attempts per endpoint answered 429 or code 99991400")


class StatsOut(BaseModel):
    counts: dict[str, int]
    counts_as_of: datetime = Field(description="when the counts were counted (Bitable keeps them: STATS_CACHE_SECONDS)")
    backlog: BacklogOut | None = Field(description="reports not yet written to Bitable; null on SQLite, which has none")
    queue: str
    queue_depth: int | None
    replenish_threshold: int = Field(description="a cycle tops the queue up when its depth is below this")
    queue_error: ErrorOut | None = Field(description="why the depth is unknown (queue_missing, broker_unavailable)")
    last_replenish: ReplenishReport | None
    next_replenish: datetime | None
    scheduler_owner: bool
    recent_cycles: list[ReplenishReport] = Field(
        default_factory=list, description=f"up to {RECENT_CYCLES} cycles, newest first; dry runs are not kept"
    )
    recent_failures: list[FailureOut] = Field(
        default_factory=list,
        description=f"up to {RECENT_FAILURES} FAILED tasks, newest finished first, read with `counts`",
    )
    feishu: FeishuUsageOut | None = Field(None, description="Bitable calls of this process; null on SQLite")


RecordIdStr = Annotated[str, Field(pattern=RECORD_ID_PATTERN)]


MAX_ERROR_CHARS = 2_000  # a report's error text past this is cut in its middle, keeping its start and its end


class ReportItem(BaseModel):
    """One task's report with what it produced: its result object and, for a failure, the error text."""

    model_config = {"extra": "forbid"}

    record_id: RecordIdStr
    result: dict[str, Any] | None = Field(
        None, description=f"a JSON object of at most {MAX_PAYLOAD_CHARS:,} characters of canonical JSON"
    )
    error: str | None = Field(
        None, description=f"the error text; past {MAX_ERROR_CHARS:,} characters its middle is cut and marked"
    )


def _report_kind(entry: Any) -> str | None:
    if isinstance(entry, str):
        return "record_id"
    return "report" if isinstance(entry, dict | ReportItem) else None


# tagged, so a bad entry is answered with the one problem it has, not with one per shape it could have had
ReportEntry = Annotated[
    Annotated[RecordIdStr, Tag("record_id")] | Annotated[ReportItem, Tag("report")],
    Discriminator(
        _report_kind,
        custom_error_type="report_entry",
        custom_error_message='a report is a record id or an object {"record_id", "result", "error"}',
    ),
]


class BulkStatusUpdate(BaseModel):
    """Tasks per new status, as workers report them: a record id, or `{"record_id", "result", "error"}`."""

    model_config = {"extra": "forbid"}

    SUCCESS: list[ReportEntry] = Field(default_factory=list)
    FAILED: list[ReportEntry] = Field(default_factory=list)
    PENDING: list[ReportEntry] = Field(default_factory=list)
    CANCELLED: list[ReportEntry] = Field(default_factory=list)


class UpdateStatusResponse(BaseModel):
    updated: dict[str, int]
    not_found: list[str]


MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000  # ?priority on ingest and a priority change alike


class PriorityChange(BaseModel):
    """`PATCH /api/tasks/{record_id}`: a PENDING task's new priority; the next cycle picks by it."""

    model_config = {"extra": "forbid"}

    priority: int = Field(
        strict=True,  # 5.0, "5" or true is refused, as ?priority=5.0 is on ingest
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="higher is picked first, as ?priority on ingest",
    )


class TaskOut(BaseModel):
    record_id: str
    identifier: str | None
    status: TaskStatus | None
    payload: dict[str, Any]
    priority: float | None
    created_at: datetime | None
    claimed_at: datetime | None
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, record: TaskRecord) -> "TaskOut":
        return cls(
            record_id=record.record_id,
            identifier=record.identifier,
            status=record.status,
            payload=record.payload,
            priority=record.priority,
            created_at=record.created_at,
            claimed_at=record.claimed_at,
            attempts=record.attempts,
            result=record.result,
            error=record.error,
            finished_at=record.finished_at,
        )


class TaskPageOut(BaseModel):
    items: list[TaskOut]
    next_page_token: str | None
    total: int | None


BULK_LIMIT = 10_000  # tasks one bulk retry or cancel may touch: bounds its cost (Bitable: 21 searches, 10 writes)


class BulkOut(BaseModel):
    """What a bulk retry or cancel matched and changed (a dry run changes nothing)."""

    matched: int = Field(description="tasks that matched, counted up to the per-request cap")
    changed: int
    dry_run: bool
    more: bool = Field(description="more tasks matched than one request may touch: run it again for the rest")
