"""Moments as Bitable stores dates: milliseconds since the epoch, UTC."""

from datetime import UTC, datetime


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: float | int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def now_ms() -> int:
    return to_ms(datetime.now(UTC))
