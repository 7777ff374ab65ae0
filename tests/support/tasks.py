"""Tasks for tests: the NewTask values a store takes, and payloads with an identifier computed independently."""

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from app.identity import canonical_json, task_identifier
from app.models import NewTask, Stored
from app.store.base import TaskStore


def new_task(n: int, priority: int | None = None, **extra) -> NewTask:
    payload = {"n": n, **extra}
    return NewTask(task_identifier(payload), payload, canonical_json(payload), priority)


async def add_all(store: TaskStore, tasks: Sequence[NewTask]) -> list[Stored]:
    """One `Stored` per task, for a test that expects every one to land: a store that stopped raises its error."""
    added = await store.add(tasks)
    if added.error is not None:
        raise added.error
    return added.stored


def identifier(payload: dict[str, Any]) -> str:
    """The contract's identifier, computed independently of app/identity.py."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def make_payload(n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "alpha": f"rank(ts_delta(close, {n}))",
        "region": rng.choice(["USA", "CHN", "EUR", "ASI"]),
        "settings": {"decay": n % 7, "neutralization": rng.choice(["MARKET", "SECTOR"]), "名称": f"α-{n}"},
        "n": n,
    }
