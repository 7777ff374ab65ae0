"""How a run was asked for: full-size reliability suites (RELIABILITY_FULL=1) and the live Bitable (TEST_LIVE=1)."""

import os

FULL = os.environ.get("RELIABILITY_FULL") == "1"
SEED = int(os.environ.get("RELIABILITY_SEED", "20261122"))
LIVE = os.environ.get("TEST_LIVE") == "1"


def size(small: int, full: int) -> int:
    """Small fixed-seed runs in `make test`; `make reliability` runs them full size."""
    return full if FULL else small
