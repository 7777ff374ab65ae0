"""The Bitable side of a deployment: the app's credentials, the table, its columns, every search the store sends,
and the identifier index against the table.

Every call goes through the store's own edge (`FeishuTable`), so a check meets Feishu exactly as the service does.
Cost: one token fetch, two field listings (ours, and the store's own schema load) and one `page_size=1` search per
filter shape (12 today): about 15 calls of the tenant's monthly quota.
"""

import asyncio
from typing import Any

from app.doctor.checks import Check, fail, ok, skip, warn
from app.errors import CredentialsRejected, QuotaExhausted, ServiceError, StoreRejected
from app.store.bitable import BitableTaskStore
from app.store.columns import OPTIONAL, REQUIRED
from app.store.feishu import FeishuTable

TYPE_NAMES = {1: "text", 2: "number", 3: "single select", 5: "date"}
# what the service stops doing when an optional column is missing
FEATURES_OFF = {
    "Priority": "tasks are picked oldest first, whatever priority they were pushed with",
    "Attempts": "claims are not counted, and lease recovery is off (it needs Attempts and ClaimedAt)",
    "ClaimedAt": "lease recovery is off: a task whose worker died stays PROCESSING",
    "Result": "workers' results are not kept (GET /api/tasks/{id} answers result null)",
    "Error": "workers' error texts are not kept (GET /api/tasks/{id} answers error null)",
    "FinishedAt": "finish times are not kept (GET /api/tasks/{id} answers finished_at null)",
}
SETUP = "run `python -m app setup-bitable` (it adds missing columns; one of the wrong type you rename by hand)"
QUOTA = "wait for the tenant's monthly API quota to reset, or raise it (the free plan has 10,000 calls a month)"
CENSUS = "index_count"  # the filter shape whose total is every row holding an identifier
ACCESS = (
    "check FEISHU_BITABLE_APP_TOKEN and FEISHU_BITABLE_TABLE_ID (from the base's URL: /base/<app_token>?table=<id>) "
    "and that the app was added to the base (… → More → Add document app)"
)


async def feishu_checks(store: BitableTaskStore) -> list[Check]:
    """Token and table, then columns, then each filter shape, then the index: each step needs the one before."""
    table = store.table
    try:
        fields = {f.name: f.type for f in await table.list_fields()}
    except ServiceError as exc:
        return _access_failed(exc)
    checks = [
        ok("feishu.token", "the app's credentials give a tenant token"),
        ok("feishu.table", f"table {table.table_id} answers ({len(fields)} columns)"),
    ]
    checks += _column_checks(fields)
    if any(c.failed for c in checks):
        return [*checks, skip("feishu.filters", "needs every required column"), skip("index", "needs the columns")]
    try:
        await store.load_schema()
    except ServiceError as exc:
        return [*checks, fail("feishu.columns", exc.detail, SETUP), skip("index", "needs the columns")]
    shapes = store.filter_shapes()
    found = await asyncio.gather(*(_search_check(table, name, search) for name, search in shapes.items()))
    totals = dict(zip(shapes, (total for _, total in found), strict=True))
    return [*checks, *(check for check, _ in found), await index_check(store, totals.get(CENSUS))]


def _access_failed(exc: ServiceError) -> list[Check]:
    """The first call fetches the token, then reads the table: the edge's message names the settings to fix."""
    rest = [skip("feishu.columns", "needs the table"), skip("feishu.filters", "needs the table")]
    if isinstance(exc, QuotaExhausted):
        token = ok("feishu.token", "the app's credentials give a tenant token")
        return [token, fail("feishu.quota", exc.detail, QUOTA), skip("feishu.table", "needs quota"), *rest]
    if isinstance(exc, CredentialsRejected):
        fix = "copy FEISHU_APP_ID and FEISHU_APP_SECRET from the app's Credentials page (and FEISHU_DOMAIN: Lark?)"
        return [fail("feishu.token", exc.detail, fix), skip("feishu.table", "needs a tenant token"), *rest]
    if not isinstance(exc, StoreRejected):  # unavailable: retried and still down
        fix = "check the network to FEISHU_DOMAIN, or try again later"
        return [fail("feishu.token", exc.detail, fix), skip("feishu.table", "needs Feishu"), *rest]
    return [ok("feishu.token", "the app's credentials give a tenant token"), fail("feishu.table", exc.detail, ACCESS)]


def _column_checks(types: dict[str, int]) -> list[Check]:
    checks = []
    for name, want in (REQUIRED | OPTIONAL).items():
        has = types.get(name)
        wanted = TYPE_NAMES[want]
        if has == want:
            checks.append(ok(f"feishu.column.{name}", wanted))
            continue
        found = "missing" if has is None else f"of type {TYPE_NAMES.get(has, has)}, needs {wanted}"
        if name in REQUIRED:
            checks.append(fail(f"feishu.column.{name}", f"{found}: the service cannot run without it", SETUP))
        else:
            checks.append(warn(f"feishu.column.{name}", f"{found}: {FEATURES_OFF[name]}", SETUP))
    return checks


async def _search_check(table: FeishuTable, name: str, search: dict[str, Any]) -> tuple[Check, int | None]:
    """One page of one row: enough for Feishu to accept or refuse the filter, its sort and its field names."""
    try:
        page = await table.search(**search, page_size=1)
    except ServiceError as exc:
        fix = "this service sends a search Feishu refuses: report it with this line"
        if isinstance(exc, QuotaExhausted):
            fix = QUOTA
        elif not isinstance(exc, StoreRejected):
            fix = "Feishu did not answer: try again later"
        return fail(f"feishu.filter.{name}", exc.detail, fix), None
    matches = "?" if page.total is None else f"{page.total:,}"
    return ok(f"feishu.filter.{name}", f"accepted ({matches} rows match)"), page.total


async def index_check(store: BitableTaskStore, table_total: int | None) -> Check:
    """The index must know every identifier in the table; it may know more (pruned rows stay in it)."""
    index = store.index
    if not index.path.exists():
        return warn("index", f"no identifier index at {index.path}: start-up rebuilds it (about 12 s per 100,000 rows)")
    await asyncio.to_thread(index.open)
    try:
        complete, count = index.complete, index.count()
    finally:
        await asyncio.to_thread(index.close)
    if not complete:
        return warn("index", f"{index.path.name} is incomplete (a rebuild was interrupted): start-up rebuilds it")
    if table_total is None:
        return skip("index", f"{count:,} identifiers; the table's count is unknown")
    if count < table_total:
        return fail(
            "index",
            f"{count:,} identifiers, but the table holds {table_total:,} rows with one: dedup would miss the others",
            "run `python -m app reindex` (rows were added by another process or by hand)",
        )
    pruned = f" (the other {count - table_total:,} were pruned or are being written)" if count > table_total else ""
    return ok("index", f"{count:,} identifiers; the table holds {table_total:,}{pruned}")
