import asyncio
import logging

import typer
from rich.console import Console

from app.config import ConfigError, load_settings
from app.store import build_store

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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cli()
