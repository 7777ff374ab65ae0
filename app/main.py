"""create_app() and the lifespan that builds everything once; running_services() for the app and the CLI."""

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api.errors import install_error_handlers
from app.api.guard import RequestGuard
from app.api.ops import probes
from app.api.ops import router as ops_router
from app.api.tasks import router as tasks_router
from app.api.ui import status_page
from app.backlog_alert import BacklogAlert
from app.broker import CeleryPublisher, Publisher
from app.claims import ClaimJournal
from app.config import Settings, load_settings
from app.cycle_history import CycleHistory
from app.dispatch import Dispatcher
from app.doctor import startup_checks
from app.errors import ServiceError
from app.logs import RequestIdMiddleware, configure_logging
from app.models import utc_now
from app.notify import Notifier, build_notifier
from app.paths import DataDir
from app.replenish import ReplenishCycle
from app.scheduler import ReplenishScheduler
from app.service import TaskService
from app.store import build_store
from app.store.base import TaskStore

log = logging.getLogger("app")


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes, the CLI and the scheduler call; the dispatcher is the one both sides claim through."""

    tasks: TaskService
    cycle: ReplenishCycle
    dispatcher: Dispatcher
    backlog_alert: BacklogAlert


def wire(
    store: TaskStore,
    settings: Settings,
    *,
    publisher: Publisher,
    notifier: Notifier,
    journal: ClaimJournal,
    clock: Callable[[], datetime] = utc_now,
) -> Services:
    """The pool's rules and the cycle over one dispatcher, so a row is never claimed twice in this process."""
    dispatcher = Dispatcher(store, publisher, journal, settings, clock)
    history = CycleHistory(settings.data_dir)
    tasks = TaskService(store, settings, publisher=publisher, dispatcher=dispatcher, history=history, clock=clock)
    return Services(
        tasks=tasks,
        cycle=ReplenishCycle(store, publisher, notifier, dispatcher, settings, history, clock),
        dispatcher=dispatcher,
        backlog_alert=BacklogAlert(tasks.report_backlog, notifier, settings.status_backlog_alert_seconds),
    )


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """Every adapter the services need, opened once and closed in reverse: for the app and the CLI alike."""
    async with AsyncExitStack() as opened:  # a part that fails to open closes the ones opened before it
        store = build_store(settings)
        await store.open()
        opened.push_async_callback(store.close)
        journal = ClaimJournal(DataDir(settings.data_dir).claims_db)
        journal.open()
        opened.callback(journal.close)
        publisher = CeleryPublisher(settings)
        opened.push_async_callback(publisher.close)
        notifier = build_notifier(settings.feishu_robot_webhook_url, settings.feishu_robot_secret.get_secret_value())
        opened.push_async_callback(notifier.close)
        yield wire(store, settings, publisher=publisher, notifier=notifier, journal=journal)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; settings are read when it starts, so a bad one stops start-up by name."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        current = settings or load_settings()
        configure_logging(current)
        await startup_checks(current)  # the doctor's read-only checks: a failure stops start-up with its fix
        app.state.api_keys = [key.get_secret_value().encode() for key in current.api_keys]
        app.state.max_request_bytes = current.max_request_bytes
        async with running_services(current) as services:
            scheduler = ReplenishScheduler(services.cycle, current, services.backlog_alert)
            app.state.settings, app.state.scheduler = current, scheduler
            app.state.service, app.state.cycle = services.tasks, services.cycle
            try:
                await services.dispatcher.settle_claims()
            except ServiceError as exc:  # the next cycle tries again
                log.warning("could not settle earlier claims at start: %s", exc.detail)
            scheduler.start()
            gc.freeze()  # the SDK's ~350k long-lived objects would make every full collection stall the loop
            log.info(
                "started: store=%s broker=%s queue=%s data_dir=%s",
                current.store_kind,
                current.broker_scheme,
                current.celery_queue,
                current.data_dir,
            )
            try:
                yield
            finally:
                scheduler.shutdown()

    # /docs and /redoc with their assets served from the installed package: no CDN, so they work offline
    app = FastAPIOffline(
        title="Task Manager for MQ",
        summary="A task pool in Feishu Bitable (or SQLite) that keeps a Celery queue fed.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(tasks_router)
    app.include_router(ops_router)
    app.include_router(probes)
    app.include_router(status_page())
    app.add_middleware(RequestGuard)
    app.add_middleware(RequestIdMiddleware)  # added last, so outermost: a refusal is logged with its id too
    return app


app = create_app()
