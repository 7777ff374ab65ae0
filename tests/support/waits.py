"""Waiting, in an async test, for what a background task does: a condition polled until a deadline."""

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(predicate: Callable[[], Any], within: float, what: str, interval: float = 0.01) -> Any:
    """Poll `predicate` (a plain or an async function) until it answers something true; the event loop runs between."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)
