"""Fakes for the service's ports (a publisher and a notifier that record what they were given) and two clocks."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.broker import Message
from app.errors import ServiceError
from app.notify import Notice


@dataclass
class FakePublisher:
    depth: int = 0
    fail_ids: set[str] = field(default_factory=set)
    error: ServiceError | None = None  # raised by queue_depth and publish, like a missing queue
    sent: list[tuple[Message, int]] = field(default_factory=list)

    async def queue_depth(self) -> int:
        if self.error:
            raise self.error
        return self.depth

    async def publish(self, messages: Sequence[Message], priority: int) -> list[str]:
        if self.error:
            raise self.error
        failed = [m.record_id for m in messages if m.record_id in self.fail_ids]
        for message in messages:
            if message.record_id not in self.fail_ids:
                self.sent.append((message, priority))
                self.depth += 1
        return failed

    async def check(self) -> None:
        if self.error:
            raise self.error

    async def close(self) -> None:
        pass


@dataclass
class RecordingNotifier:
    notices: list[Notice] = field(default_factory=list)

    async def send(self, notice: Notice) -> bool:
        self.notices.append(notice)
        return True

    async def close(self) -> None:
        pass


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Seconds:
    """A monotonic clock (seconds, like time.monotonic) the test moves by hand."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
