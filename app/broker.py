"""The Celery publisher: sends tasks to a queue the workers' app owns, and reads its depth."""

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import KombuError

from app.config import PayloadAs, Settings
from app.errors import BrokerUnavailable, QueueMissing
from app.paths import DataDir

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    record_id: str
    payload: dict[str, Any]


class Publisher(Protocol):
    async def queue_depth(self) -> int:
        """Ready messages in the queue; raises QueueMissing or BrokerUnavailable."""

    async def publish(self, messages: Sequence[Message], priority: int) -> list[str]:
        """Send each message; answer the record ids that could not be sent."""

    async def check(self) -> None:
        """Raise BrokerUnavailable unless the broker answers."""

    async def close(self) -> None: ...


def make_celery(settings: Settings) -> Celery:
    """The Celery app both this service and examples/worker.py use, so they agree on the transport."""
    options: dict[str, Any] = {}
    url = settings.broker_url
    if settings.broker_scheme == "amqp":
        options["confirm_publish"] = True  # each publish waits for the broker's ack; a nack raises
    elif settings.broker_scheme == "filesystem" and not url:
        url = "filesystem://localhost//"  # a host named: kombu warns on every connection without one
        paths = DataDir(settings.data_dir.resolve())
        for folder in (paths.broker_queue, paths.broker_processed, paths.broker_control):
            folder.mkdir(parents=True, exist_ok=True)
        options |= {
            "data_folder_in": str(paths.broker_queue),
            "data_folder_out": str(paths.broker_queue),
            "processed_folder": str(paths.broker_processed),
            "control_folder": str(paths.broker_control),
            "store_processed": False,
            "polling_interval": 0.1,  # the default 1 s wait caps each worker at one task a second
        }
    app = Celery(settings.celery_app_name, broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_timeout=settings.broker_timeout_seconds,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
    return app


class CeleryPublisher:
    """Publishes with `declare=[]` over one producer per batch; never redeclares the workers' queue."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)
        self.queue = settings.celery_queue
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="broker")  # kombu is not async
        connection = self.celery.connection_for_write()  # loads the transport: a missing client fails at start
        self._broker_errors = (OSError, KombuError, *connection.connection_errors, *connection.channel_errors)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def queue_depth(self) -> int:
        return await self._run(self._depth)

    async def publish(self, messages: Sequence[Message], priority: int) -> list[str]:
        if not messages:
            return []
        return await self._run(self._publish, list(messages), priority)

    async def check(self) -> None:
        await self._run(self._connect_and, lambda conn: None)

    async def close(self) -> None:
        await self._run(self.celery.close)
        self._executor.shutdown(wait=True)

    # ---- in the broker thread -------------------------------------------------------------------

    def _connect_and(self, work: Callable[[Any], T]) -> T:
        timeout = self.settings.broker_timeout_seconds
        try:
            # pooled: a new AMQP connection per look costs more than the look itself
            with self.celery.pool.acquire(block=True, timeout=timeout) as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                return work(conn)
        except self._broker_errors as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {type(exc).__name__}: {exc}") from None

    def _depth(self) -> int:
        return self._connect_and(self._passive_depth)

    def _passive_depth(self, conn: Any) -> int:
        channel = conn.channel()
        try:
            _, count, _ = channel.queue_declare(queue=self.queue, passive=True)
            return count
        except conn.channel_errors:
            if self.settings.broker_scheme == "redis":
                return 0  # an empty Redis queue has no keys at all
            if self.settings.celery_queue_max_priority is None:
                raise QueueMissing(
                    f"queue {self.queue!r} does not exist on the broker; start the workers (they declare it) "
                    "or set CELERY_QUEUE_MAX_PRIORITY to let this service create it"
                ) from None
            self._declare(conn)
            return 0
        finally:
            try:
                channel.close()
            except Exception:  # a 404 has already closed it
                log.debug("channel already closed")

    def _declare(self, conn: Any) -> None:
        """Create the missing queue the way a Celery worker would, with the configured x-max-priority."""
        queue = Queue(
            self.queue,
            Exchange(self.queue, type="direct"),
            routing_key=self.queue,
            queue_arguments={"x-max-priority": self.settings.celery_queue_max_priority},
        )
        queue(conn.channel()).declare()
        log.warning("created queue %r with x-max-priority=%s", self.queue, self.settings.celery_queue_max_priority)

    def _publish(self, messages: list[Message], priority: int) -> list[str]:
        self._depth()  # with declare=[] a message to a missing queue is dropped silently: look first
        as_arg = self.settings.celery_payload_as is PayloadAs.ARG
        failed: list[str] = []
        try:
            with self.celery.producer_or_acquire() as producer:
                for sent, message in enumerate(messages):
                    try:
                        self.celery.send_task(
                            self.settings.celery_task_name,
                            args=[message.payload] if as_arg else None,
                            kwargs=None if as_arg else message.payload,
                            task_id=message.record_id,
                            queue=self.queue,
                            priority=priority,
                            producer=producer,
                            declare=[],
                            timeout=self.settings.broker_timeout_seconds,
                            confirm_timeout=self.settings.broker_timeout_seconds,  # a silent broker must not hold us
                        )
                    except Exception as exc:
                        log.error("publish of %s failed: %s: %s", message.record_id, type(exc).__name__, exc)
                        failed += [m.record_id for m in messages[sent:]]  # the connection is gone: stop here
                        break
        except Exception as exc:
            log.error("broker connection failed: %s: %s", type(exc).__name__, exc)
            return [m.record_id for m in messages]
        return failed
