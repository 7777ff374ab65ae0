"""Small helpers both adapters share: record ids, timestamps, page tokens."""

import secrets
import string
from datetime import UTC, datetime

_ALPHABET = string.ascii_letters + string.digits


def new_record_id() -> str:
    """Same shape as Bitable's record ids, so clients see one format whichever store runs."""
    return "rec" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: float | int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def now_ms() -> int:
    return to_ms(datetime.now(UTC))


def chunked(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
