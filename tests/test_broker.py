"""CeleryPublisher against the real brokers: RabbitMQ and Redis on 127.0.0.1, and the embedded filesystem one."""

import logging
import time
from pathlib import Path

import pytest
import redis
from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection

from app.broker import Message, make_celery
from app.config import ConfigError, load_settings
from app.errors import BrokerUnavailable, QueueMissing
from tests.support.brokers import (
    declare_workers_queue,
    drain,
    free_port,
    passive_declare,
    publisher_settings,
    workers_queue,
)
from tests.support.settings import make_settings

# the shared broker fixtures (assigned, not imported, so ruff does not read each test's argument as a redefinition)

broker = pytest.mark.broker


def messages(prefix: str, count: int) -> list[Message]:
    return [Message(f"{prefix}-{i}", {"n": i, "prefix": prefix}) for i in range(count)]


def task_ids(delivered) -> list[str]:
    return [message.headers["id"] for message in delivered]


def broker_folder(data_dir: Path) -> dict[str, int]:
    """The embedded broker's folders under DATA_DIR/broker, with the number of files in each."""
    return {folder.name: len(list(folder.iterdir())) for folder in (data_dir / "broker").iterdir()}


def wait_for(condition, timeout: float = 5) -> bool:
    """Poll until `condition()` holds or the deadline passes; answers its last value."""
    deadline = time.monotonic() + timeout
    while not (ok := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ok


# ---- RabbitMQ -------------------------------------------------------------------------------------------


@broker
async def test_rabbit_publishes_into_the_workers_priority_queue_without_redeclaring_it(
    rabbit_url, queue_name, tmp_path, make_publisher
):
    declare_workers_queue(rabbit_url, queue_name, max_priority=10)  # the workers' app owns the queue
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))

    assert await publisher.publish(messages("rec", 3), publisher.settings.priorities[0]) == []

    assert await publisher.queue_depth() == 3
    assert passive_declare(rabbit_url, queue_name) == (3, 0)
    declare_workers_queue(rabbit_url, queue_name, max_priority=10)  # same arguments: still equivalent
    with pytest.raises(PreconditionFailed, match="x-max-priority"):
        declare_workers_queue(rabbit_url, queue_name, max_priority=None)  # what Celery would auto-declare


@broker
@pytest.mark.parametrize("payload_as", ["kwargs", "arg"])
async def test_rabbit_message_is_a_celery_task_whose_id_is_the_record_id(
    rabbit_url, queue_name, tmp_path, make_publisher, payload_as
):
    declare_workers_queue(rabbit_url, queue_name)
    settings = publisher_settings(tmp_path, rabbit_url, queue_name, celery_payload_as=payload_as)
    publisher = make_publisher(settings)
    payload = {"alpha": "close(x)", "region": "USA", "delay": 1}

    assert await publisher.publish([Message("recA1b2", payload)], settings.priorities[0]) == []

    [delivered] = drain(rabbit_url, queue_name, 1)
    assert delivered.headers["task"] == settings.celery_task_name == "wqb.tasks.simulate_task"
    assert delivered.headers["id"] == "recA1b2"
    args, kwargs, _embed = delivered.decode()
    if payload_as == "kwargs":
        assert (args, kwargs) == ([], payload)
    else:
        assert (args, kwargs) == ([payload], {})
    assert delivered.properties["priority"] == settings.priorities[0]
    assert delivered.delivery_info["routing_key"] == queue_name


@broker
async def test_rabbit_high_priority_overtakes_default(rabbit_url, queue_name, tmp_path, make_publisher):
    declare_workers_queue(rabbit_url, queue_name)
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))
    default, high = publisher.settings.priorities
    assert (default, high) == (1, 9)

    assert await publisher.publish(messages("regular", 5), default) == []
    assert await publisher.publish([Message("urgent", {"n": 0})], high) == []

    delivered = drain(rabbit_url, queue_name, 6)
    assert task_ids(delivered) == ["urgent"] + [f"regular-{i}" for i in range(5)]


@broker
async def test_rabbit_missing_queue_is_an_error_and_nothing_is_created(
    rabbit_url, queue_name, tmp_path, make_publisher
):
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))

    with pytest.raises(QueueMissing, match=queue_name):
        await publisher.queue_depth()
    with pytest.raises(QueueMissing, match="CELERY_QUEUE_MAX_PRIORITY"):
        await publisher.publish(messages("rec", 2), publisher.settings.priorities[0])

    with pytest.raises(NotFound):  # neither the depth check nor the publish created it
        passive_declare(rabbit_url, queue_name)


@broker
async def test_rabbit_missing_queue_is_created_with_the_configured_max_priority(
    rabbit_url, queue_name, tmp_path, make_publisher
):
    settings = publisher_settings(tmp_path, rabbit_url, queue_name, celery_queue_max_priority=7)
    publisher = make_publisher(settings)

    assert await publisher.queue_depth() == 0

    assert passive_declare(rabbit_url, queue_name) == (0, 0)
    declare_workers_queue(rabbit_url, queue_name, max_priority=7)  # equivalent: the queue has x-max-priority 7
    with pytest.raises(PreconditionFailed, match="x-max-priority"):
        declare_workers_queue(rabbit_url, queue_name, max_priority=10)
    assert await publisher.publish(messages("rec", 2), settings.priorities[1]) == []
    assert await publisher.queue_depth() == 2


@broker
async def test_rabbit_depth_counts_ready_messages_not_unacked_ones(rabbit_url, queue_name, tmp_path, make_publisher):
    declare_workers_queue(rabbit_url, queue_name)
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))
    assert await publisher.publish(messages("rec", 3), publisher.settings.priorities[0]) == []
    assert await publisher.queue_depth() == 3

    with Connection(rabbit_url, connect_timeout=3) as worker:  # a worker holds one message, unacked
        held = workers_queue(queue_name)(worker.channel()).get(no_ack=False)
        assert held is not None
        assert await publisher.queue_depth() == 2
    # the worker's connection is gone: the broker requeues its message
    assert wait_for(lambda: passive_declare(rabbit_url, queue_name)[0] == 3)
    assert await publisher.queue_depth() == 3


@pytest.mark.parametrize("url", ["amqp://guest:guest@h:5672//", "pyamqp://h//", "amqps://h//"])
def test_rabbit_publisher_confirms_are_on(tmp_path, url):
    settings = publisher_settings(tmp_path, url, "q")
    assert settings.broker_scheme == "amqp"
    assert make_celery(settings).conf.broker_transport_options["confirm_publish"] is True


async def test_broker_down_is_reported_quickly(tmp_path, make_publisher):
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    publisher = make_publisher(publisher_settings(tmp_path, url, "tm-test-nowhere", broker_timeout_seconds=1))

    for call in (publisher.queue_depth, lambda: publisher.publish(messages("rec", 2), 1), publisher.check):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            await call()
        assert time.monotonic() - started < 10


@broker
async def test_rabbit_check_passes_when_the_broker_answers(rabbit_url, tmp_path, make_publisher):
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, "tm-test-unused"))
    await publisher.check()  # no queue needed: it only proves the broker answers


@broker
async def test_rabbit_publishes_a_batch_of_500(rabbit_url, queue_name, tmp_path, make_publisher):
    declare_workers_queue(rabbit_url, queue_name)
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))

    assert await publisher.publish(messages("rec", 500), publisher.settings.priorities[0]) == []

    assert await publisher.queue_depth() == 500


@broker
async def test_rabbit_publish_of_nothing_sends_nothing(rabbit_url, queue_name, tmp_path, make_publisher):
    publisher = make_publisher(publisher_settings(tmp_path, rabbit_url, queue_name))
    assert await publisher.publish([], 1) == []  # not even the queue check: the queue does not exist


# ---- Redis ----------------------------------------------------------------------------------------------


@broker
async def test_redis_depth_is_zero_for_a_missing_queue_and_sums_the_priority_lists(
    redis_url, queue_name, tmp_path, make_publisher
):
    publisher = make_publisher(publisher_settings(tmp_path, redis_url, queue_name))
    default, high = publisher.settings.priorities
    assert (default, high) == (6, 0)

    assert await publisher.queue_depth() == 0  # an empty Redis queue has no keys at all

    assert await publisher.publish(messages("regular", 3), default) == []
    assert await publisher.publish(messages("urgent", 1), high) == []
    assert await publisher.queue_depth() == 4
    with redis.Redis.from_url(redis_url) as client:
        assert client.llen(queue_name) == 1  # priority 0 lives in the bare key
        assert client.llen(f"{queue_name}\x06\x166") == 3


@broker
async def test_redis_high_priority_overtakes_default(redis_url, queue_name, tmp_path, make_publisher):
    publisher = make_publisher(publisher_settings(tmp_path, redis_url, queue_name))
    default, high = publisher.settings.priorities

    assert await publisher.publish(messages("regular", 5), default) == []
    assert await publisher.publish([Message("urgent", {"n": 0})], high) == []

    delivered = drain(redis_url, queue_name, 6)
    assert task_ids(delivered) == ["urgent"] + [f"regular-{i}" for i in range(5)]
    args, kwargs, _ = delivered[0].decode()
    assert (delivered[0].headers["task"], args, kwargs) == (publisher.settings.celery_task_name, [], {"n": 0})


# ---- embedded (no CELERY_BROKER_URL): the filesystem transport under DATA_DIR/broker -------------------


async def test_embedded_broker_queues_files_under_the_data_dir(tmp_path, make_publisher):
    data_dir = tmp_path / "data"
    publisher = make_publisher(make_settings(data_dir, celery_queue="tm-embedded"))
    assert publisher.settings.broker_scheme == "filesystem"
    default, high = publisher.settings.priorities

    assert await publisher.queue_depth() == 0
    assert await publisher.publish(messages("regular", 2), default) == []
    assert await publisher.publish(messages("urgent", 1), high) == []  # no priorities here: accepted, ignored

    assert await publisher.queue_depth() == 3
    assert broker_folder(data_dir) == {"queue": 3, "processed": 0, "control": 0}
    await publisher.check()


async def test_embedded_broker_warns_about_nothing(tmp_path, make_publisher, caplog):
    # kombu warned "No hostname was supplied" on every connection: noise in every CLI command and cycle
    caplog.set_level(logging.INFO)
    publisher = make_publisher(make_settings(tmp_path / "data", celery_queue="tm-embedded"))
    await publisher.publish(messages("quiet", 1), publisher.settings.priorities[0])
    assert await publisher.queue_depth() == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---- settings: priority direction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", (1, 9)),
        ("pyamqp://127.0.0.1//", (1, 9)),
        ("redis://127.0.0.1:6379/0", (6, 0)),
        ("rediss://127.0.0.1:6379/0", (6, 0)),
        ("", (1, 9)),
    ],
)
def test_default_priorities_follow_the_broker(tmp_path, url, expected):
    settings = make_settings(tmp_path, celery_broker_url=url)
    assert settings.priorities == expected
    settings.check_priorities()


def test_rabbit_priorities_set_backwards_fail_at_start_up(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("CELERY_DEFAULT_PRIORITY", "5")
    monkeypatch.setenv("CELERY_HIGH_PRIORITY", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "CELERY_DEFAULT_PRIORITY" in message
    assert "CELERY_HIGH_PRIORITY" in message
    assert "larger number is more urgent" in message


def test_redis_priorities_set_backwards_fail_at_start_up(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CELERY_DEFAULT_PRIORITY", "1")
    monkeypatch.setenv("CELERY_HIGH_PRIORITY", "5")
    with pytest.raises(ConfigError, match=r"CELERY_HIGH_PRIORITY.*CELERY_DEFAULT_PRIORITY.*0 is the most urgent"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(("name", "value"), [("CELERY_DEFAULT_PRIORITY", "10"), ("CELERY_HIGH_PRIORITY", "12")])
def test_redis_priority_over_9_fails_at_start_up(monkeypatch, name, value):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="0-9 on Redis"):
        load_settings(_env_file=None)


def test_priorities_in_the_right_direction_load(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("CELERY_DEFAULT_PRIORITY", "2")
    monkeypatch.setenv("CELERY_HIGH_PRIORITY", "8")
    assert load_settings(_env_file=None).priorities == (2, 8)


# ---- priorities that would not have the intended effect fail at start-up ---------------------------------


def test_redis_sentinel_urls_take_the_redis_priority_direction(tmp_path):
    settings = make_settings(tmp_path, celery_broker_url="sentinel://127.0.0.1:26379/0")
    assert settings.broker_scheme == "redis"
    assert settings.priorities == (6, 0)


@pytest.mark.parametrize(("default", "high"), [("2", "1"), ("5", "3")])
def test_redis_priorities_in_one_kombu_step_fail_at_start_up(monkeypatch, default, high):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CELERY_DEFAULT_PRIORITY", default)
    monkeypatch.setenv("CELERY_HIGH_PRIORITY", high)
    with pytest.raises(ConfigError, match="CELERY_DEFAULT_PRIORITY"):
        load_settings(_env_file=None)


def test_rabbit_default_priority_at_the_queue_max_fails_at_start_up(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("CELERY_QUEUE_MAX_PRIORITY", "5")
    monkeypatch.setenv("CELERY_DEFAULT_PRIORITY", "6")  # high stays 9: both are delivered as 5
    with pytest.raises(ConfigError, match="CELERY_QUEUE_MAX_PRIORITY"):
        load_settings(_env_file=None)
