"""The Bitable table's columns: which exist, and task values written to them and read back from their shapes."""

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from app.errors import StoreRejected
from app.identity import canonical_json
from app.models import NewTask, StatusChange, TaskRecord, TaskStatus
from app.store.feishu import FeishuTable
from app.store.timestamps import from_ms, to_ms

log = logging.getLogger(__name__)

TEXT, NUMBER, SINGLE_SELECT, DATE = 1, 2, 3, 5
PLAIN_TYPES = {TEXT, NUMBER, SINGLE_SELECT, DATE}

IDENTIFIER, STATUS, PAYLOAD, CREATED_AT = "Identifier", "Status", "Payload", "CreatedAt"
PRIORITY, ATTEMPTS, CLAIMED_AT = "Priority", "Attempts", "ClaimedAt"
RESULT, ERROR, FINISHED_AT = "Result", "Error", "FinishedAt"
REQUIRED = {IDENTIFIER: TEXT, STATUS: SINGLE_SELECT, PAYLOAD: TEXT, CREATED_AT: DATE}
OPTIONAL = {PRIORITY: NUMBER, ATTEMPTS: NUMBER, CLAIMED_AT: DATE, RESULT: TEXT, ERROR: TEXT, FINISHED_AT: DATE}
COLUMNS = {**REQUIRED, **OPTIONAL}
STATUS_OPTIONS = {"options": [{"name": status.value} for status in TaskStatus]}
# date and time, not the day alone (the field guide's date property: date_formatter, auto_fill)
DATE_AND_TIME = {"date_formatter": "yyyy/MM/dd HH:mm", "auto_fill": False}
COLUMN_PROPERTIES = {
    STATUS: STATUS_OPTIONS,
    CREATED_AT: DATE_AND_TIME,
    CLAIMED_AT: DATE_AND_TIME,
    FINISHED_AT: DATE_AND_TIME,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class Schema:
    """The table's columns by name and type; a service column of another type counts as missing."""

    types: dict[str, int] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in COLUMNS and self.types.get(name) == COLUMNS[name]

    @property
    def mirrors(self) -> dict[str, int]:
        """Plain columns a same-named top-level payload or result key is copied into, for sorting and filtering."""
        return {name: t for name, t in self.types.items() if t in PLAIN_TYPES and name not in COLUMNS}

    @property
    def supports_leases(self) -> bool:
        return self.has(CLAIMED_AT) and self.has(ATTEMPTS)

    def new_row(self, task: NewTask, created_at: int) -> dict[str, Any]:
        """The cells of a new task's row: its mirrors, then the service columns that exist."""
        row = self._mirror_cells(task.payload)
        row |= {IDENTIFIER: task.identifier, STATUS: task.status.value, PAYLOAD: task.canonical, CREATED_AT: created_at}
        if task.priority is not None and self.has(PRIORITY):
            row[PRIORITY] = task.priority
        if task.claimed_at is not None:
            row |= self._claim_cells(task.claimed_at, 1)
        return row

    def changed_cells(self, change: StatusChange) -> dict[str, Any]:
        """The cells a change writes: only what it carries, so a report without a result keeps the last one."""
        cells = self._mirror_cells(change.result) if change.result is not None else {}
        cells |= {STATUS: change.status.value, **self._claim_cells(change.claimed_at, change.attempts)}
        if change.identifier:
            cells[IDENTIFIER] = change.identifier
        if change.result is not None and self.has(RESULT):
            cells[RESULT] = canonical_json(change.result)
        if change.error is not None and self.has(ERROR):
            cells[ERROR] = change.error
        if change.finished_at is not None and self.has(FINISHED_AT):
            cells[FINISHED_AT] = to_ms(change.finished_at)
        return cells

    def _mirror_cells(self, values: dict[str, Any]) -> dict[str, Any]:
        """Top-level keys (of a payload or a result) copied into same-named plain columns, where they fit."""
        cells = {}
        for name, column_type in self.mirrors.items():
            if name in values:
                value = mirror_value(values[name], column_type)
                if value is not None:
                    cells[name] = value
        return cells

    def _claim_cells(self, claimed_at: Any, attempts: int | None) -> dict[str, Any]:
        cells: dict[str, Any] = {}
        if claimed_at is not None and self.has(CLAIMED_AT):
            cells[CLAIMED_AT] = to_ms(claimed_at)
        if attempts is not None and self.has(ATTEMPTS):
            cells[ATTEMPTS] = attempts
        return cells

    def decode(self, record_id: str, fields: dict[str, Any]) -> TaskRecord:
        """A row as read back (search and batch_get shapes) as a task."""
        cells = {name: plain(value) for name, value in fields.items()}
        payload = json_object(cells.get(PAYLOAD))
        if payload is None:  # typed in by hand: its plain columns are the payload
            payload = {k: v for k, v in cells.items() if k not in COLUMNS and self.types.get(k) in PLAIN_TYPES}
        status = cells.get(STATUS)
        error = cells.get(ERROR) if self.has(ERROR) else None
        return TaskRecord(
            record_id=record_id,
            identifier=cells.get(IDENTIFIER) or None,
            status=TaskStatus(status) if status in TaskStatus.__members__ else None,
            payload=payload,
            priority=number(cells.get(PRIORITY)),
            created_at=from_ms(number(cells.get(CREATED_AT))),
            claimed_at=from_ms(number(cells.get(CLAIMED_AT))),
            attempts=int(number(cells.get(ATTEMPTS)) or 0),
            result=json_object(cells.get(RESULT)) if self.has(RESULT) else None,
            error=error if isinstance(error, str) and error else None,
            finished_at=from_ms(number(cells.get(FINISHED_AT))) if self.has(FINISHED_AT) else None,
        )


async def load_schema(table: FeishuTable) -> Schema:
    """The table's columns; refused by name when a required one is missing, one warning for optional ones."""
    schema = Schema({f.name: f.type for f in await table.list_fields()})
    wrong = [
        f"{name} (needs type {want}, has {schema.types.get(name, 'none')})"
        for name, want in REQUIRED.items()
        if schema.types.get(name) != want
    ]
    if wrong:
        raise StoreRejected(
            f"the Bitable table lacks required columns: {', '.join(wrong)}; run `python -m app setup-bitable`"
        )
    missing = [name for name in OPTIONAL if not schema.has(name)]
    if missing:
        log.warning(
            "optional columns missing or of another type: %s; priority ordering, attempts, lease recovery and "
            "workers' results, errors and finish times need them (`python -m app setup-bitable` adds them)",
            ", ".join(missing),
        )
    return schema


async def setup_columns(table: FeishuTable) -> tuple[list[str], list[str]]:
    """Create every missing service column with its type and property; answer (created, wrong type)."""
    existing = {f.name: f.type for f in await table.list_fields()}
    created, wrong = [], []
    for name, column_type in COLUMNS.items():
        if name not in existing:
            await table.create_field(name, column_type, COLUMN_PROPERTIES.get(name))
            created.append(name)
        elif existing[name] != column_type:
            wrong.append(f"{name} (type {existing[name]}, needs {column_type})")
    return created, wrong


def plain(value: Any) -> Any:
    """Bitable's read shapes back to plain values: text segments are joined, the rest kept."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "".join(str(segment.get("text", "")) for segment in value)
    if isinstance(value, dict) and "text" in value:
        return value["text"]
    return value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def json_object(text: Any) -> dict[str, Any] | None:
    """The object a Payload or Result cell holds, or None when it holds none (empty, not JSON, not an object)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def mirror_value(value: Any, column_type: int) -> Any:
    """The value as the column takes it, or None when it does not fit (an int past a float's range neither)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and number(value) is not None
    if column_type == TEXT and (isinstance(value, str) or is_number):
        return str(value) if value != "" else None
    if column_type == NUMBER and is_number:
        return value
    if column_type == SINGLE_SELECT and isinstance(value, str) and value:
        return value
    if column_type == DATE and is_number and isinstance(value, int) and value >= 0:
        return value
    return None


def is_identifier(value: Any) -> bool:
    """Whether an Identifier cell holds one of ours (a person may type anything there)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None
