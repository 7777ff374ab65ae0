"""The broker, the workers' queue, its x-max-priority, and whether the priority pair fits it.

A passive declare tells whether the queue exists, never its arguments, and the management API is often closed
(and needs other credentials). So the maximum is read by a **re-declare, only once the queue is known to exist**,
on a fresh channel of its own, the way the workers' Celery app declares it (durable, no auto-delete) with the
x-max-priority we expect (CELERY_QUEUE_MAX_PRIORITY, else none): RabbitMQ answers OK when the arguments are the
queue's own, changing nothing, or 406 PRECONDITION_FAILED naming the current value, which closes only that channel.
Left open: a queue deleted between the two declares would be created by the second (a window of one round trip).
Start-up runs only the passive part: it writes nothing to the broker.
"""

import asyncio
import re
from typing import Any

from kombu.exceptions import KombuError

from app.broker import make_celery
from app.config import Settings
from app.doctor.checks import Check, fail, ok, skip, warn
from app.paths import DataDir

_CURRENT = re.compile(r"x-max-priority'.*current is (?:the value )?'(\d+)'")
_NO_QUEUE = "queue_missing"
_RECREATE = (
    "declare it with x-max-priority in the workers' task_queues (Queue(..., queue_arguments={'x-max-priority': 10})), "
    "then delete and recreate it; until then RabbitMQ ignores priorities"
)


async def broker_checks(settings: Settings, *, probe_max_priority: bool) -> list[Check]:
    scheme = settings.broker_scheme
    if scheme == "filesystem":
        return [
            ok("broker", f"the embedded broker under {DataDir(settings.data_dir).broker} (no server)"),
            skip("queue.priorities", "the embedded broker has no priorities"),
        ]
    found = await asyncio.to_thread(_look, settings, probe_max_priority and scheme == "amqp")
    if isinstance(found, Exception):
        detail = f"the broker is unreachable: {type(found).__name__}: {found}"
        fix = "start the broker, or check CELERY_BROKER_URL (host, port, user, vhost)"
        return [fail("broker", detail, fix, blocks_startup=False), skip("queue", "needs the broker")]
    depth, max_priority = found
    checks = [ok("broker", f"{scheme} answers")]
    queue = settings.celery_queue
    if depth is _NO_QUEUE and scheme == "redis":
        checks.append(ok("queue", f"{queue!r} holds no messages (Redis keeps no empty queue)"))
    elif depth is _NO_QUEUE and settings.celery_queue_max_priority is not None:
        detail = f"{queue!r} does not exist yet: the first cycle creates it with x-max-priority"
        checks.append(warn("queue", f"{detail}={settings.celery_queue_max_priority}", blocks_startup=False))
    elif depth is _NO_QUEUE:
        checks.append(
            fail(
                "queue",
                f"{queue!r} does not exist on the broker: nothing can be published (RabbitMQ would drop it)",
                "start the workers (they declare it), check CELERY_QUEUE, or set CELERY_QUEUE_MAX_PRIORITY to let "
                "this service create it",
                blocks_startup=False,
            )
        )
        return [*checks, skip("queue.priorities", "needs the queue")]
    else:
        checks.append(ok("queue", f"{queue!r} exists, {depth:,} ready messages"))
    return checks + _priority_checks(settings, depth is not _NO_QUEUE and probe_max_priority, max_priority)


def _priority_checks(settings: Settings, probed: bool, found: Any) -> list[Check]:
    default, high = settings.priorities
    if settings.broker_scheme == "redis":
        return [ok("queue.priorities", f"default {default}, high {high}: on Redis 0 is the most urgent")]
    if not probed:
        return [skip("queue.priorities", "x-max-priority is read by `python -m app doctor` only")]
    if isinstance(found, str):
        return [warn("queue.max_priority", found), skip("queue.priorities", "x-max-priority unknown")]
    if found is None:
        return [
            warn("queue.max_priority", "the queue has no x-max-priority: urgent tasks wait behind the rest", _RECREATE),
            skip("queue.priorities", "the queue ignores priorities"),
        ]
    checks = [ok("queue.max_priority", f"x-max-priority {found}")]
    pair = f"CELERY_DEFAULT_PRIORITY {default}, CELERY_HIGH_PRIORITY {high}"
    if default >= found:
        detail = f"{pair}: RabbitMQ caps both at the queue's x-max-priority {found}, so urgent tasks are not ahead"
        fix = f"set CELERY_DEFAULT_PRIORITY below {found} and CELERY_HIGH_PRIORITY above it, at most {found}"
        return [*checks, fail("queue.priorities", detail, fix)]
    if high > found:
        detail = f"{pair}: the high one is capped at the queue's maximum {found} (still ahead of the default)"
        return [*checks, warn("queue.priorities", detail, f"set CELERY_HIGH_PRIORITY to {found}")]
    return [*checks, ok("queue.priorities", f"{pair} fit x-max-priority {found}")]


def _look(settings: Settings, probe: bool) -> tuple[Any, Any] | Exception:
    """(ready messages or _NO_QUEUE, x-max-priority or None or why it is unknown), or the error reaching the broker."""
    celery = make_celery(settings)
    timeout = settings.broker_timeout_seconds
    try:
        with celery.connection_for_write() as conn:
            try:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                depth = _passive(conn, settings.celery_queue)
                if depth is _NO_QUEUE or not probe:
                    return depth, None
                return depth, _max_priority(conn, settings.celery_queue, settings.celery_queue_max_priority)
            except (OSError, KombuError, *conn.connection_errors) as exc:
                return exc
    finally:
        celery.close()


def _passive(conn: Any, queue: str) -> Any:
    channel = conn.channel()
    try:
        return channel.queue_declare(queue=queue, passive=True)[1]
    except conn.channel_errors:
        return _NO_QUEUE
    finally:
        _close(channel)


def _max_priority(conn: Any, queue: str, expected: int | None) -> int | str | None:
    channel = conn.channel()  # its own: a 406 closes the channel it came on
    arguments = None if expected is None else {"x-max-priority": expected}
    try:
        channel.queue_declare(queue=queue, durable=True, auto_delete=False, arguments=arguments)
        return expected
    except conn.channel_errors as exc:
        text = str(exc)
        if (match := _CURRENT.search(text)) is not None:
            return int(match.group(1))
        if "x-max-priority" in text and "current is none" in text:
            return None
        return f"could not read x-max-priority: the queue was declared with other properties ({text})"
    finally:
        _close(channel)


def _close(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # a 404 or 406 has closed it already
        pass
