"""Canonical JSON and the task identifier: the sha256 that dedup is keyed on."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.errors import InvalidInput

MAX_PAYLOAD_CHARS = 100_000  # a Bitable text cell holds at most 100,000 characters
# built once: json.dumps would build an encoder per payload, a third of the cost on small payloads
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The payload's one textual form: the hashed bytes and the stored copy."""
    try:
        text = _CANONICAL.encode(payload)
        text.encode("utf-8")
    except (ValueError, TypeError) as exc:  # NaN/Infinity, lone surrogates
        raise InvalidInput(f"payload is not representable as JSON: {exc}") from None
    return text


def task_identifier(payload: Mapping[str, Any], dedup_keys: Sequence[str] = (), canonical: str | None = None) -> str:
    """sha256 of the canonical JSON; pass `canonical` when it is already built for the whole payload."""
    if canonical is not None and not dedup_keys:
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if dedup_keys:
        subset = {key: payload[key] for key in dedup_keys if key in payload}
        if not subset:
            raise InvalidInput(f"payload has none of the DEDUP_KEYS ({', '.join(dedup_keys)})")
        payload = subset
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()
