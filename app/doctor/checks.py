"""What one check found: a value the doctor prints as one line and start-up turns into a refusal."""

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"  # a check it needs failed first, or it does not apply here


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    # an outage the service rides out (the broker, the workers' queue): start-up warns instead of refusing
    blocks_startup: bool = True

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix and self.status in (Status.FAIL, Status.WARN) else text

    def as_json(self) -> dict[str, Any]:
        return {key: str(value) for key, value in asdict(self).items() if key != "blocks_startup"}


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str = "", *, blocks_startup: bool = True) -> Check:
    return Check(name, Status.WARN, detail, fix, blocks_startup)


def fail(name: str, detail: str, fix: str, *, blocks_startup: bool = True) -> Check:
    return Check(name, Status.FAIL, detail, fix, blocks_startup)


def skip(name: str, detail: str) -> Check:
    return Check(name, Status.SKIP, detail)
