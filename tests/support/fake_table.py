"""A Bitable table in memory for the writer's tests: `batch_create` and the identifier search, no HTTP."""

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

from app.store.feishu import MaybeApplied, Page


class FakeTable:
    """Rows by record id, read back in Bitable's text shape; a create can be held at `gate` or faulted.

    `log` lists what reached the table, in order: ("create", identifiers) as a create starts, ("search",
    identifiers) for a lookup, and whatever a test appends itself (the update it sends in a turn).
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, Any]] = []
        self.gate: asyncio.Event | None = None  # an unset Event holds every create until it is set
        self.started = asyncio.Event()  # set as a create starts; a test clears it to wait for the next one
        # sees a create's rows: raises to refuse it, answers True to store them and lose the answer (MaybeApplied)
        self.fault: Callable[[list[dict[str, Any]]], bool] | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self._record_ids = itertools.count(1)

    def creates(self) -> list[list[str]]:
        return [identifiers for what, identifiers in self.log if what == "create"]

    async def batch_create(self, body: bytes, client_token: str) -> list[tuple[str, dict[str, Any]]]:
        rows = [record["fields"] for record in json.loads(body)["records"]]
        self.log.append(("create", [row["Identifier"] for row in rows]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            lost = self.fault(rows) if self.fault is not None else False
            created = [(f"rec{next(self._record_ids):06d}", row) for row in rows]
            self.rows.update(created)
            if lost:
                raise MaybeApplied()
            return created
        finally:
            self.in_flight -= 1

    async def search(self, *, filter_: dict[str, Any] | None = None, **_: Any) -> Page:
        """The writer's lookup only: an `or` of `Identifier is …` conditions, answered in one page."""
        wanted = [c["value"][0] for c in (filter_ or {}).get("conditions", []) if c["operator"] == "is"]
        self.log.append(("search", wanted))
        found = [
            (record_id, {"Identifier": [{"type": "text", "text": row["Identifier"]}]})
            for record_id, row in self.rows.items()
            if row["Identifier"] in wanted
        ]
        return Page(records=found, page_token=None, total=len(found))
