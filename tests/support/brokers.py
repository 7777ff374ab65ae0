"""Real-broker fixtures and helpers: RabbitMQ and Redis on 127.0.0.1, one unique queue per test.

Fixtures: ``rabbit_url``, ``redis_url`` (session; skip when the broker is down, fail under CI), ``queue_name``
(unique, deleted afterwards), ``make_publisher`` (CeleryPublishers closed at teardown); tests/conftest.py imports
them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from amqp.exceptions import NotFound
from kombu import Connection, Exchange, Queue
from kombu.message import Message as KombuMessage

from app.broker import CeleryPublisher
from app.config import Settings
from tests.support.processes import free_port
from tests.support.settings import make_settings

__all__ = [
    "RABBIT_URL",
    "REDIS_PRIORITY_SUFFIXES",
    "REDIS_URL",
    "declare_workers_queue",
    "delete_rabbit_queue",
    "drain",
    "free_port",
    "make_publisher",
    "passive_declare",
    "publisher_settings",
    "queue_name",
    "rabbit_url",
    "redis_url",
]

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/15"  # db 15: nothing else on this machine uses it

# kombu's Redis transport keeps one list per priority step: `queue` (0), then `queue\x06\x16<step>`
REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

# ---- reachability --------------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return True
    except Exception:
        return False


def _require(name: str, url: str, start: str, answers: Callable[[], bool]) -> str:
    if answers():
        return url
    where = urlsplit(url).netloc.rpartition("@")[2].rsplit("/", 1)[0]
    if os.environ.get("CI"):
        pytest.fail(f"{name} not reachable on {where}; CI must run broker tests")
    pytest.skip(f"{name} not reachable on {where}: start it with `{start}`")


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    return _require("RabbitMQ", RABBIT_URL, "rabbitmq-server -detached", lambda: _answers(RABBIT_URL))


@pytest.fixture(scope="session")
def redis_url() -> str:
    start = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
    return _require("Redis", REDIS_URL, start, lambda: _answers(REDIS_URL))


# ---- one queue per test --------------------------------------------------------------------------------


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name no other test uses; afterwards it is removed from whichever brokers the test used."""
    name = f"tm-test-{uuid.uuid4().hex[:12]}"
    yield name
    if "rabbit_url" in request.fixturenames:
        delete_rabbit_queue(RABBIT_URL, name)
    if "redis_url" in request.fixturenames:
        keys = [name + suffix for suffix in REDIS_PRIORITY_SUFFIXES] + [f"_kombu.binding.{name}"]
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(*keys)


def delete_rabbit_queue(url: str, name: str) -> None:
    """Remove the queue and the exchange a worker-style declare creates."""
    with Connection(url, connect_timeout=3) as conn:
        for delete in ("queue_delete", "exchange_delete"):  # the exchange a worker-style declare creates
            channel = conn.channel()
            try:
                getattr(channel, delete)(name)
            except NotFound:
                pass
            finally:
                if channel.is_open:
                    channel.close()


# ---- helpers -------------------------------------------------------------------------------------------


def workers_queue(name: str, max_priority: int | None = 10) -> Queue:
    """The queue as the workers' Celery app declares it (no arguments when max_priority is None)."""
    arguments = None if max_priority is None else {"x-max-priority": max_priority}
    return Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)


def declare_workers_queue(url: str, name: str, max_priority: int | None = 10) -> None:
    """Declare the queue as another app (the workers) would, on a fresh connection."""
    with Connection(url, connect_timeout=3) as conn:
        channel = conn.channel()
        try:
            workers_queue(name, max_priority)(channel).declare()
        finally:
            if channel.is_open:
                channel.close()


def passive_declare(url: str, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of an existing queue; raises the transport's 404 when it is missing."""
    with Connection(url, connect_timeout=3) as conn:
        channel = conn.channel()
        try:
            _, count, consumers = channel.queue_declare(queue=name, passive=True)
            return count, consumers
        finally:
            if channel.is_open:
                channel.close()


def drain(url: str, name: str, limit: int, timeout: float = 5) -> list[KombuMessage]:
    """Take up to `limit` messages off the queue (no ack), in the order the broker delivers them.

    Uses basic.get so nothing is prefetched out of order; the queue is never (re)declared. On Redis the
    kombu transport pops the priority lists most-urgent first, as a worker's consumer would.
    """
    messages: list[KombuMessage] = []
    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=3) as conn:
        queue = workers_queue(name, None)(conn.channel())
        while len(messages) < limit:
            message = queue.get(no_ack=True)
            if message is not None:
                messages.append(message)
            elif time.monotonic() > deadline:
                break
            else:
                time.sleep(0.02)  # bounded poll: the broker may still be settling the last publish
    return messages


def publisher_settings(tmp_path: Path, broker_url: str, queue: str, **overrides: Any) -> Settings:
    return make_settings(tmp_path, celery_broker_url=broker_url, celery_queue=queue, **overrides)


@pytest.fixture
async def make_publisher() -> AsyncIterator[Callable[[Settings], CeleryPublisher]]:
    """Builds CeleryPublishers and closes every one of them when the test ends."""
    made: list[CeleryPublisher] = []

    def make(settings: Settings) -> CeleryPublisher:
        made.append(CeleryPublisher(settings))
        return made[-1]

    yield make
    for publisher in made:
        await publisher.close()
