import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from app.config import ConfigError, load_settings
from app.errors import ServiceError
from app.service import TaskService
from app.store import build_store

T = TypeVar("T")

cli = typer.Typer(help="Task Manager for MQ", no_args_is_help=True, add_completion=False)
console = Console()


def _settings():
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", envvar="HOST"),
    port: int = typer.Option(8000, envvar="PORT"),
) -> None:
    """Run the HTTP service (the same app as `uvicorn app.main:app`)."""
    import uvicorn

    _settings()
    uvicorn.run("app.main:app", host=host, port=port)


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


def _with_service(work: Callable[[TaskService], Awaitable[T]]) -> T:
    from app.main import running_service

    async def run() -> T:
        async with running_service(_settings()) as service:
            return await work(service)

    try:
        return asyncio.run(run())
    except ServiceError as exc:
        console.print(f"[red]{exc.error}: {exc.detail}[/red]")
        raise typer.Exit(1) from None


@cli.command()
def replenish(dry_run: bool = typer.Option(False, "--dry-run", help="report what would be claimed")) -> None:
    """Run one replenish cycle now (the same cycle the scheduler and POST /api/replenish run)."""
    report = _with_service(lambda service: service.replenish(dry_run=dry_run))
    table = Table("field", "value", title=f"replenish: {report.outcome}")
    for name, value in report.model_dump(exclude_none=True).items():
        table.add_row(name, str(value))
    console.print(table)
    if report.outcome == "failed":
        raise typer.Exit(1)


@cli.command()
def stats() -> None:
    """Tasks per status and the queue's depth."""
    result = _with_service(lambda service: service.stats())
    table = Table("status", "tasks", title="task pool")
    for status, count in result.counts.items():
        table.add_row(status, f"{count:,}")
    console.print(table)
    depth = f"{result.queue_depth:,}" if result.queue_depth is not None else f"[red]{result.queue_error}[/red]"
    console.print(f"queue {result.queue!r}: {depth} ready messages")
    if result.last_replenish:
        console.print(f"last replenish: {result.last_replenish.finished_at} ({result.last_replenish.outcome})")


@cli.command()
def demo(
    tasks: int = typer.Option(500, min=1, max=100_000, help="how many tasks to push through the loop"),
    workers: int = typer.Option(3, min=1, max=32, help="example worker processes"),
) -> None:
    """The whole loop on the embedded default, with live progress: ingest, replenish, workers, SUCCESS."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(tasks=tasks, workers=workers, console=console))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cli()
