import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.tasks import router as tasks_router
from app.config import Settings, load_settings
from app.service import TaskService
from app.store import build_store

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; settings are read when it starts, so a bad one stops start-up by name."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        current = settings or load_settings()
        store = build_store(current)
        await store.open()
        app.state.settings = current
        app.state.store = store
        app.state.service = TaskService(store, current)
        log.info("started with store=%s data_dir=%s", current.store_kind, current.data_dir)
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="Task Manager for MQ",
        summary="A task pool in Feishu Bitable (or SQLite) that keeps a Celery queue fed.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(tasks_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    return app


app = create_app()
