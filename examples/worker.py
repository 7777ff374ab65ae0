"""A Celery worker for CELERY_TASK_NAME: the other half of the loop, for demos and end-to-end tests.

It reads its settings exactly as the service does (the service's Settings: `.env` in the directory it
starts in, the environment winning), so it consumes the same broker (the embedded one under DATA_DIR by
default) and sends the service's own API key. Run it from the repository root, beside the service's `.env`:

    .venv/bin/celery -A examples.worker worker -Q celery --concurrency 2 --loglevel INFO

Each task does sample work (a Fibonacci number and a short sleep) and fails now and then. It reports back
through POST /api/tasks/update-status, using its own task id as the record id: SUCCESS with what the work
returned as `result` (when that is a JSON object), or FAILED with the exception as `error` ("Type: text").

Its own settings, read the same way: TASK_MANAGER_URL (default: http://HOST:PORT), TASK_MANAGER_API_KEY
(default: the first of API_KEYS), WORKER_FAIL_RATE (default 0.1), WORKER_SLEEP_SECONDS (default 0.05). On RabbitMQ
it declares CELERY_QUEUE with x-max-priority = CELERY_QUEUE_MAX_PRIORITY (default 10).
"""

import hashlib
import json
import logging
import random
import time

import httpx
from kombu import Exchange, Queue
from pydantic import Field, SecretStr
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from app.broker import make_celery
from app.config import Settings, load_settings


class WorkerSettings(Settings):
    """The service's settings (same .env, same rules) and the worker's own."""

    task_manager_url: str = ""  # empty: the service `task-manager serve` runs with the same HOST and PORT
    task_manager_api_key: SecretStr = SecretStr("")
    worker_fail_rate: float = Field(0.1, ge=0, le=1)
    worker_sleep_seconds: float = Field(0.05, ge=0)

    @property
    def service_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return (self.task_manager_url or f"http://{host}:{self.port}").rstrip("/")

    @property
    def api_key(self) -> str:
        key = self.task_manager_api_key.get_secret_value()
        return key or (self.api_keys[0].get_secret_value() if self.api_keys else "")


log = logging.getLogger("examples.worker")
settings = load_settings(WorkerSettings)
app = make_celery(settings)
# one message at a time, acknowledged after the work: a killed worker's task is delivered again
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)
if settings.broker_scheme == "amqp":
    # the workers own the queue: declare it with priorities, as the service expects (x-max-priority)
    max_priority = settings.celery_queue_max_priority or 10
    app.conf.task_queues = [
        Queue(
            settings.celery_queue,
            Exchange(settings.celery_queue, type="direct"),
            routing_key=settings.celery_queue,
            queue_arguments={"x-max-priority": max_priority},
        )
    ]

SERVICE_URL = settings.service_url
_client = httpx.Client(timeout=10, headers={"X-API-Key": settings.api_key} if settings.api_key else {})


def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class SimulatedFailure(Exception):
    """The failure WORKER_FAIL_RATE asks for, so the FAILED path runs too."""


def work(payload: dict) -> dict:
    """The sample work: a Fibonacci number chosen by the payload, then a short sleep."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).digest()
    n = 20 + digest[0] % 10
    value = fibonacci(n)
    time.sleep(settings.worker_sleep_seconds)
    if random.random() < settings.worker_fail_rate:
        raise SimulatedFailure(f"fibonacci({n}) was not to be (WORKER_FAIL_RATE {settings.worker_fail_rate})")
    return {"n": n, "fibonacci": value}


def _may_pass(exc: BaseException) -> bool:
    """A refused report (4xx) is refused again; the network, a 5xx or a 429 may pass on a later try."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return isinstance(exc, httpx.TransportError)


@retry(
    retry=retry_if_exception(_may_pass),
    stop=stop_after_delay(60),
    wait=wait_exponential(multiplier=0.5, max=10),
    reraise=True,
)
def report(status: str, item: dict) -> None:
    response = _client.post(f"{SERVICE_URL}/api/tasks/update-status", json={status: [item]})
    response.raise_for_status()


@app.task(name=settings.celery_task_name, bind=True)
def simulate_task(self, *args, **kwargs):
    payload = args[0] if args else kwargs
    record_id = self.request.id
    try:
        result = work(payload)
    except Exception as exc:
        report("FAILED", {"record_id": record_id, "error": f"{type(exc).__name__}: {exc}"})
        log.info("task %s → FAILED (%s)", record_id, exc)
        return None
    item = {"record_id": record_id}
    if isinstance(result, dict):  # a result is a JSON object; anything else is reported as the status alone
        item["result"] = result
    report("SUCCESS", item)
    log.info("task %s → SUCCESS", record_id)
    return result
