"""The command line: python -m app / task-manager (serve, replenish, stats, tasks show, prune, doctor, demo…)."""

import asyncio
import json
import logging
import re
import resource
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from app.config import ConfigError, StoreKind, load_settings
from app.errors import ServiceError
from app.logs import configure_logging
from app.models import (
    BULK_LIMIT,
    MAX_PRIORITY,
    MIN_PRIORITY,
    RECORD_ID_PATTERN,
    BulkOut,
    TaskFilter,
    TaskOut,
    TaskRecord,
    TaskStatus,
)
from app.store import build_store

if TYPE_CHECKING:
    from app.main import Services

T = TypeVar("T")

cli = typer.Typer(help="Task Manager for MQ", no_args_is_help=True, add_completion=False)
tasks_cli = typer.Typer(help="Look at tasks, or change one's priority.", no_args_is_help=True)
cli.add_typer(tasks_cli, name="tasks")
console = Console(width=shutil.get_terminal_size((160, 24)).columns)  # piped output is not cut at 80 columns


def _settings():
    try:
        settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    configure_logging(settings)
    return settings


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="default: HOST from .env or the environment (127.0.0.1)"),
    port: int | None = typer.Option(None, help="default: PORT from .env or the environment (8000)"),
) -> None:
    """Run the HTTP service (the same app as `uvicorn app.main:app`)."""
    import uvicorn

    settings = _settings()
    open_files = _raise_open_file_limit()
    if open_files < settings.server_limit_concurrency + _SPARE_FILES:
        logging.getLogger("app").warning(
            "the open-file limit (%d) leaves too few for SERVER_LIMIT_CONCURRENCY=%d connections: raise it "
            "(docker run --ulimit nofile=65536) or lower the setting",
            open_files,
            settings.server_limit_concurrency,
        )
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,  # uvicorn's lines go through the one redacting handler set up above, not a second one
        limit_concurrency=settings.server_limit_concurrency,  # past it: 503 at once, logged by uvicorn
        backlog=settings.server_backlog,
        timeout_keep_alive=settings.server_timeout_keep_alive,
    )


_SPARE_FILES = 128  # descriptors besides connections: SQLite files, the broker, Feishu connections, logs


def _raise_open_file_limit() -> int:
    """The soft open-file limit up to the hard one (containers often start at 1,024); answers the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


@cli.command()
def reindex() -> None:
    """Rebuild the identifier index from the pool (Bitable: a paged read of the Identifier column)."""

    async def run() -> int:
        store = build_store(_settings())
        await store.open()
        try:
            return await store.reindex()
        finally:
            await store.close()

    count = asyncio.run(run())
    console.print(f"identifier index rebuilt: {count:,} identifiers")


def _with_services(work: "Callable[[Services], Awaitable[T]]") -> T:
    from app.main import running_services

    async def run() -> T:
        async with running_services(_settings()) as services:
            return await work(services)

    try:
        return asyncio.run(run())
    except ServiceError as exc:
        console.print(f"[red]{exc.error}: {exc.detail}[/red]")
        raise typer.Exit(1) from None


@cli.command()
def replenish(dry_run: bool = typer.Option(False, "--dry-run", help="report what would be claimed")) -> None:
    """Run one replenish cycle now (the same cycle the scheduler and POST /api/replenish run)."""
    report = _with_services(lambda services: services.cycle.run(dry_run=dry_run))
    table = Table("field", "value", title=f"replenish: {report.outcome}")
    for name, value in report.model_dump(exclude_none=True).items():
        table.add_row(name, str(value))
    console.print(table)
    if report.outcome == "failed":
        raise typer.Exit(1)


@cli.command()
def stats() -> None:
    """Tasks per status and the queue's depth."""
    result = _with_services(lambda services: services.tasks.stats())
    table = Table("status", "tasks", title="task pool")
    for status, count in result.counts.items():
        table.add_row(status, f"{count:,}")
    console.print(table)
    if result.queue_error is not None:  # its detail names the queue
        console.print(f"[red]{result.queue_error.error}[/red]: {result.queue_error.detail}")
    else:
        console.print(f"queue {result.queue!r}: {result.queue_depth:,} ready messages")
    if result.last_replenish:
        console.print(f"last replenish: {result.last_replenish.finished_at} ({result.last_replenish.outcome})")


@cli.command("setup-bitable")
def setup_bitable() -> None:
    """Create every missing column of the Bitable table (existing ones are left alone)."""
    from app.store.bitable import BitableTaskStore
    from app.store.columns import setup_columns

    settings = _settings()
    if settings.store_kind is not StoreKind.BITABLE:
        console.print("[red]setup-bitable needs a Bitable: set FEISHU_APP_ID and the other FEISHU_* settings[/red]")
        raise typer.Exit(2)

    async def setup() -> tuple[list[str], list[str]]:
        table = BitableTaskStore.from_settings(settings).table
        try:
            return await setup_columns(table)
        finally:
            await table.aclose()

    try:
        created, wrong = asyncio.run(setup())
    except ServiceError as exc:
        console.print(f"[red]{exc.error}: {exc.detail}[/red]")
        raise typer.Exit(1) from None
    console.print(f"created: {', '.join(created)}" if created else "every column is already there")
    if wrong:
        console.print(f"[yellow]columns of the wrong type (change or rename them by hand): {', '.join(wrong)}[/yellow]")
        raise typer.Exit(1)


class FinishedStatus(StrEnum):
    """The statuses prune takes: offering PENDING or PROCESSING only to refuse them would mislead."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@cli.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="one JSON object instead of lines, for scripts"),
    send_test_card: bool = typer.Option(False, "--send-test-card", help="also post a test card to the bot"),
) -> None:
    """Check the deployment end to end: settings, Feishu, every search filter, the bot, the broker, DATA_DIR."""
    from app.doctor import exit_code, run_doctor

    def settings():
        loaded = load_settings()
        configure_logging(loaded)
        return loaded

    checks = asyncio.run(run_doctor(settings, send_test_card=send_test_card))
    if as_json:
        typer.echo(json.dumps({"ok": not exit_code(checks), "checks": [c.as_json() for c in checks]}, indent=2))
    else:
        colours = {"ok": "green", "warn": "yellow", "FAIL": "red", "skip": "dim"}
        for check in checks:  # soft_wrap: one line per check, whatever the terminal's width
            style = colours[check.status.value]
            console.print(check.line(), style=style, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(checks))


@cli.command()
def prune(
    status: Annotated[FinishedStatus, typer.Option("--status", help="which finished tasks")],
    older_than: Annotated[float, typer.Option("--older-than", help="days since the task was created")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be deleted; delete nothing")] = False,
) -> None:
    """Delete finished tasks to keep the table under its row limit; dedup still knows them."""
    count = _with_services(lambda services: services.tasks.prune(TaskStatus(status.value), older_than, dry_run=dry_run))
    age = f"created more than {older_than:g} days ago"
    if dry_run:
        console.print(f"would remove {count:,} {status.value} tasks {age} (dry run: nothing deleted)")
        return
    console.print(f"removed {count:,} {status.value} tasks {age}; their identifiers stay in the dedup index")


@tasks_cli.command("show")
def tasks_show(
    target: Annotated[str, typer.Argument(help="how many tasks to list, or one record id")],
    status: Annotated[TaskStatus | None, typer.Option("--status", help="only tasks with this status")] = None,
) -> None:
    """List the first N tasks (optionally of one status), or show one task in full."""
    if target.isascii() and target.isdigit():  # str.isdigit() takes '²' too, which int() refuses
        limit = max(1, min(int(target), 500))
        page = _with_services(lambda services: services.tasks.list_tasks(status, limit, None))
        of = f" of {page.total:,}" if page.total is not None else ""
        title = f"first {len(page.items):,}{of} {status.value + ' ' if status else ''}tasks"
        table = Table("record id", "status", "priority", "attempts", "created", "payload", title=title)
        for record in page.items:
            table.add_row(*_row(record))
        console.print(table)
        return
    if not re.fullmatch(RECORD_ID_PATTERN, target):
        console.print(f"{target!r} is neither a number of tasks nor a record id", style="red", markup=False)
        raise typer.Exit(2)
    record = _with_services(lambda services: services.tasks.get_task(target))
    typer.echo(TaskOut.of(record).model_dump_json(indent=2))  # the API's shape: plain JSON, for jq too


@tasks_cli.command("priority", context_settings={"ignore_unknown_options": True})  # takes -5 as a priority
def tasks_priority(
    record_id: Annotated[str, typer.Argument(help="the PENDING task's record id")],
    priority: Annotated[
        int, typer.Argument(min=MIN_PRIORITY, max=MAX_PRIORITY, help="its new priority: higher is picked first")
    ],
) -> None:
    """Change a PENDING task's priority; the next cycle picks by it. Prints the task as JSON."""
    if not re.fullmatch(RECORD_ID_PATTERN, record_id):
        console.print(f"{record_id!r} is not a record id", style="red", markup=False)
        raise typer.Exit(2)
    record = _with_services(lambda services: services.tasks.change_priority(record_id, priority))
    typer.echo(TaskOut.of(record).model_dump_json(indent=2))


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date and time", param_hint=option) from None
    if moment.utcoffset() is None:
        raise typer.BadParameter("needs a time zone (Z or an offset such as +08:00)", param_hint=option)
    return moment


def _bulk(
    action: str,
    status: TaskStatus,
    run: "Callable[[Services, TaskFilter, bool], Awaitable[BulkOut]]",
    where: TaskFilter,
    dry_run: bool,
    yes: bool,
) -> None:
    """Count first, ask, then act (unless --yes); each step is one run of the service, as the API's dry run."""

    def go(dry: bool) -> BulkOut:
        return _with_services(lambda services: run(services, where, dry))

    if dry_run or not yes:
        counted = go(True)
        more = f" (at least: one run touches at most {BULK_LIMIT:,})" if counted.more else ""
        console.print(f"{counted.matched:,} {status.value} tasks match{more}")
        if dry_run or not counted.matched:
            return
        typer.confirm(f"{action.capitalize()} them?", abort=True)
    done = go(False)
    rest = f"; more match: run it again for the next {BULK_LIMIT:,}" if done.more else ""
    console.print(f"{action}: {done.changed:,} of {done.matched:,} matching {status.value} tasks changed{rest}")


def _filter(
    priority: float | None,
    priority_min: float | None,
    priority_max: float | None,
    created_after: str | None,
    created_before: str | None,
    identifier: str | None,
) -> TaskFilter:
    """The options as the API's filter, checked the same way; a bad one stops the command before it starts."""
    from app.service import TaskService

    if identifier is not None and not re.fullmatch(r"[0-9a-f]{64}", identifier):
        raise typer.BadParameter("an identifier is 64 lowercase hex digits", param_hint="--identifier")
    try:
        return TaskService.task_filter(
            priority=priority,
            priority_min=priority_min,
            priority_max=priority_max,
            created_after=_moment(created_after, "--created-after"),
            created_before=_moment(created_before, "--created-before"),
            identifier=identifier,
        )
    except ServiceError as exc:
        raise typer.BadParameter(exc.detail) from None


PriorityOpt = Annotated[float | None, typer.Option("--priority", help="exactly this priority")]
PriorityMinOpt = Annotated[float | None, typer.Option("--priority-min", help="priority at least (inclusive)")]
PriorityMaxOpt = Annotated[float | None, typer.Option("--priority-max", help="priority at most (inclusive)")]
AfterOpt = Annotated[
    str | None, typer.Option("--created-after", help="created at or after (ISO 8601 with a zone, e.g. …T08:00Z)")
]
BeforeOpt = Annotated[str | None, typer.Option("--created-before", help="created before (exclusive; ISO 8601)")]
IdentifierOpt = Annotated[str | None, typer.Option("--identifier", help="the task's 64-hex identifier")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="only count the tasks that match; change nothing")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


@tasks_cli.command("retry-failed")
def tasks_retry_failed(
    priority: PriorityOpt = None,
    priority_min: PriorityMinOpt = None,
    priority_max: PriorityMaxOpt = None,
    created_after: AfterOpt = None,
    created_before: BeforeOpt = None,
    identifier: IdentifierOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Every FAILED task matching the filters back to PENDING with attempts reset (asks first unless --yes)."""
    where = _filter(priority, priority_min, priority_max, created_after, created_before, identifier)
    _bulk("retry", TaskStatus.FAILED, lambda s, f, d: s.tasks.retry_failed(f, dry_run=d), where, dry_run, yes)


@tasks_cli.command("cancel-pending")
def tasks_cancel_pending(
    priority: PriorityOpt = None,
    priority_min: PriorityMinOpt = None,
    priority_max: PriorityMaxOpt = None,
    created_after: AfterOpt = None,
    created_before: BeforeOpt = None,
    identifier: IdentifierOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Every PENDING task matching the filters to CANCELLED (asks first unless --yes)."""
    where = _filter(priority, priority_min, priority_max, created_after, created_before, identifier)
    _bulk("cancel", TaskStatus.PENDING, lambda s, f, d: s.tasks.cancel_pending(f, dry_run=d), where, dry_run, yes)


def _row(record: TaskRecord) -> list[str]:
    created = record.created_at.strftime("%Y-%m-%d %H:%M:%S") if record.created_at else ""
    payload = json.dumps(record.payload, ensure_ascii=False)
    return [
        record.record_id,
        str(record.status or ""),
        "" if record.priority is None else f"{record.priority:g}",
        str(record.attempts),
        created,
        payload if len(payload) <= 80 else payload[:77] + "...",
    ]


@cli.command()
def demo(
    tasks: int = typer.Option(500, min=1, max=100_000, help="how many tasks to push through the loop"),
    workers: int = typer.Option(3, min=1, max=32, help="example worker processes"),
) -> None:
    """The whole loop on the embedded default, with live progress: ingest, replenish, workers, SUCCESS."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(tasks=tasks, workers=workers, console=console))


def main() -> None:
    cli()  # no logging set-up here: each command's settings install the one redacting handler
