"""The searches the Bitable store sends, as keyword arguments for `FeishuTable.search`, and the lookup by identifier."""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from app.errors import InvalidInput
from app.models import TaskFilter, TaskStatus
from app.store.columns import (
    ATTEMPTS,
    CLAIMED_AT,
    CREATED_AT,
    ERROR,
    FINISHED_AT,
    IDENTIFIER,
    PRIORITY,
    STATUS,
    Schema,
    plain,
)
from app.store.feishu import FeishuTable
from app.store.timestamps import to_ms

MAX_PAGE = 500  # search page_size
MAX_CONDITIONS = 50
MAX_FILTER_CHARS = 2_000
_DAY = timedelta(days=1)


def condition(field_name: str, operator: str, value: str) -> dict[str, Any]:
    return {"field_name": field_name, "operator": operator, "value": [value]}


def _is(field_name: str, value: str) -> dict[str, Any]:
    return condition(field_name, "is", value)


def _status_is(status: TaskStatus) -> dict[str, Any]:
    return {"conjunction": "and", "conditions": [_is(STATUS, status.value)]}


def _on_or_before_day(field_name: str, moment: datetime) -> dict[str, Any]:
    """Dated on or before that day: dates filter by whole days, with is/isEmpty/isNotEmpty/isGreater/isLess only."""
    return {"field_name": field_name, "operator": "isLess", "value": ["ExactDate", str(to_ms(moment + _DAY))]}


def _on_or_after_day(field_name: str, moment: datetime) -> dict[str, Any]:
    """Dated on or after that day (whole days, as `_on_or_before_day`)."""
    return {"field_name": field_name, "operator": "isGreater", "value": ["ExactDate", str(to_ms(moment - _DAY))]}


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def filter_search(status: TaskStatus | None, where: TaskFilter, schema: Schema) -> dict[str, Any]:
    """A page in creation order narrowed to a superset of `where`: created-at by whole days, so the store compares
    the exact time (`TaskFilter.matches`); numbers and text match exactly."""
    conditions = [_is(STATUS, status.value)] if status else []
    if where.identifier is not None:
        conditions.append(_is(IDENTIFIER, where.identifier))
    numbers = [("is", where.priority), ("isGreaterEqual", where.priority_min), ("isLessEqual", where.priority_max)]
    if any(value is not None for _, value in numbers) and not schema.has(PRIORITY):
        raise InvalidInput("the table has no Priority column: no task has a priority to filter by")
    conditions += [condition(PRIORITY, op, _number(value)) for op, value in numbers if value is not None]
    if where.created_after is not None:
        conditions.append(_on_or_after_day(CREATED_AT, where.created_after))
    if where.created_before is not None:
        conditions.append(_on_or_before_day(CREATED_AT, where.created_before))
    filter_ = {"conjunction": "and", "conditions": conditions} if conditions else None
    return {"filter_": filter_, "sort": [{"field_name": CREATED_AT, "desc": False}]}


def count_search(status: TaskStatus | None) -> dict[str, Any]:
    """A page in creation order (the API's list, and with page_size=1 the count of a status)."""
    return {"filter_": _status_is(status) if status else None, "sort": [{"field_name": CREATED_AT, "desc": False}]}


def _failure_fields(schema: Schema) -> list[str]:
    """What /api/stats shows of a failed task, of the columns the table has, and its creation to order by."""
    return [STATUS, *(name for name in (IDENTIFIER, CREATED_AT, ATTEMPTS, ERROR, FINISHED_AT) if schema.has(name))]


def status_scan(schema: Schema) -> dict[str, Any]:
    """Every row's Status, unfiltered: a small pool is counted by reading it (the total is the pool's size); with
    what a failure shows, so the newest failures come with the count."""
    return {"field_names": _failure_fields(schema)}


def failed_search(schema: Schema) -> dict[str, Any]:
    """FAILED, newest first: by finish time where the table keeps one, else by creation."""
    newest = FINISHED_AT if schema.has(FINISHED_AT) else CREATED_AT
    return {
        "filter_": _status_is(TaskStatus.FAILED),
        "sort": [{"field_name": newest, "desc": True}],
        "field_names": _failure_fields(schema),
    }


def pick_search(schema: Schema) -> dict[str, Any]:
    sort = [{"field_name": PRIORITY, "desc": True}] if schema.has(PRIORITY) else []
    sort.append({"field_name": CREATED_AT, "desc": False})
    return {"filter_": _status_is(TaskStatus.PENDING), "sort": sort}


def lease_search(claimed_on_or_before: datetime) -> dict[str, Any]:
    filter_ = _status_is(TaskStatus.PROCESSING)
    filter_["conditions"].append(_on_or_before_day(CLAIMED_AT, claimed_on_or_before))
    return {"filter_": filter_}


def prune_search(status: TaskStatus, created_before: datetime) -> dict[str, Any]:
    filter_ = _status_is(status)
    filter_["conditions"].append(_on_or_before_day(CREATED_AT, created_before))
    return {"filter_": filter_, "field_names": [IDENTIFIER, CREATED_AT]}


def identifier_search(identifiers: list[str]) -> dict[str, Any]:
    return {
        "filter_": {"conjunction": "or", "conditions": [_is(IDENTIFIER, i) for i in identifiers]},
        "field_names": [IDENTIFIER],
    }


def identifier_chunks(identifiers: list[str]) -> list[list[str]]:
    """Split into `or` filters that stay under 50 conditions and 2,000 characters of JSON."""
    overhead = len(json.dumps({"conjunction": "or", "conditions": []}))
    per = len(json.dumps(_is(IDENTIFIER, "0" * 64))) + 2
    size = max(1, min(MAX_CONDITIONS, (MAX_FILTER_CHARS - overhead) // per))
    return [identifiers[i : i + size] for i in range(0, len(identifiers), size)]


async def find_identifiers(table: FeishuTable, identifiers: Sequence[str]) -> dict[str, str]:
    """Identifier → record id for those present in the table, by `or` searches within the filter limits."""
    found: dict[str, str] = {}
    for chunk in identifier_chunks(list(identifiers)):
        search, token = identifier_search(chunk), None
        while True:
            page = await table.search(**search, page_token=token)
            for record_id, fields in page.records:
                found.setdefault(plain(fields.get(IDENTIFIER)), record_id)
            if not (token := page.page_token):
                break
    return {i: found[i] for i in identifiers if i in found}
