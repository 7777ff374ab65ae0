"""The identifier index rebuilt from the table: disjoint parts read at once, checked against a count."""

import asyncio
import itertools
import logging
import math
from collections.abc import Awaitable
from typing import Any

from app.store.columns import IDENTIFIER, is_identifier, plain
from app.store.feishu import FeishuTable, Page
from app.store.index import IdentifierIndex
from app.store.searches import MAX_PAGE, condition

log = logging.getLogger(__name__)

# two coins, four parts searched at once; doubled digits, as a pair that overlaps itself is a rarer find: P = 0.505
_COINS = (("00", "11", "22"), ("33", "44", "55"))
_NOT_EMPTY = {"field_name": IDENTIFIER, "operator": "isNotEmpty", "value": []}


async def rebuild_index(table: FeishuTable, index: IdentifierIndex) -> int:
    """Read every Identifier into the index, in parallel parts; identifiers already known stay."""
    index.mark_complete(False)
    census = table.search(**census_search(), page_size=1)
    *totals, expected = await _gather_or_cancel(*(_read_part(table, index, part) for part in index_parts()), census)
    if None in totals or sum(totals) != expected.total:
        # the parts rest on `contains` being a substring test, which Feishu's docs do not spell out
        log.warning("index rebuild: the parts held %s rows, the table %s; reading it whole", totals, expected.total)
        await _read_part(table, index, None)
    index.mark_complete(True)
    return index.count()


def rebuild_searches() -> dict[str, dict[str, Any]]:
    """The searches a rebuild sends, named as `filter_shapes()` names them."""
    parts = {f"index_part_{n}": part_search(part) for n, part in enumerate(index_parts(), 1)}
    return {"index_count": census_search(), **parts}


async def _read_part(table: FeishuTable, index: IdentifierIndex, filter_: dict[str, Any] | None) -> int | None:
    """Page through one part, answering its total; a page goes into the index while the next is on its way."""

    def fetch(token: str | None, rows_left: float) -> asyncio.Future[Page]:
        # the part with the most rows left goes first: the parts end together, none pages alone at the end
        search = table.search(**part_search(filter_), page_size=MAX_PAGE, page_token=token, priority=rows_left)
        return asyncio.ensure_future(search)

    page, read = await fetch(None, math.inf), 0
    total = page.total
    while True:
        read += len(page.records)
        following = fetch(page.page_token, (page.total or 0) - read) if page.page_token else None
        try:
            pairs = [(plain(fields.get(IDENTIFIER)), rid) for rid, fields in page.records]
            # in a thread: ~15 ms of SQLite a page would hold up the other parts' calls
            await asyncio.to_thread(index.mark_stored, [(i, r) for i, r in pairs if is_identifier(i)])
        except BaseException:
            if following is not None:
                following.cancel()
            raise
        if following is None:
            return total
        page = await following


def index_parts() -> list[dict[str, Any]]:
    """Search filters that split the rows holding an identifier into disjoint parts, to page through at once.

    One search stream pages at one call a round trip (100 ms: 10/s); Feishu allows 20 searches a second.
    Whether a sha256 hex holds one of three given digit pairs is a fair coin; each part is one outcome of
    the coins: `contains` any pair of the coins it holds, `doesNotContain` every pair of the rest. Every
    non-empty Identifier matches exactly one part (parts of 25.0, 25.5, 25.6 and 23.9% of random hashes),
    and rebuild_index() checks that against a count. Digits only: case folding cannot move a row between parts.
    """
    parts = []
    for outcome in itertools.product((True, False), repeat=len(_COINS)):
        coins = list(zip(_COINS, outcome, strict=True))
        lacked = [pair for pairs, held in coins if not held for pair in pairs]
        filter_: dict[str, Any] = {
            "conjunction": "and",
            "conditions": [_NOT_EMPTY, *(condition(IDENTIFIER, "doesNotContain", pair) for pair in lacked)],
        }
        if any(held for _, held in coins):
            filter_["children"] = [
                {"conjunction": "or", "conditions": [condition(IDENTIFIER, "contains", pair) for pair in pairs]}
                for pairs, held in coins
                if held
            ]
        parts.append(filter_)
    return parts


def census_search() -> dict[str, Any]:
    return {"filter_": {"conjunction": "and", "conditions": [_NOT_EMPTY]}, "field_names": [IDENTIFIER]}


def part_search(filter_: dict[str, Any] | None) -> dict[str, Any]:
    return {"filter_": filter_, "field_names": [IDENTIFIER]}


async def _gather_or_cancel(*steps: Awaitable[Any]) -> list[Any]:
    """Like gather, but the first error cancels the other steps before it is raised."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
