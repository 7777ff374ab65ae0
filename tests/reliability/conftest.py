"""Reliability suites: small fixed-seed versions run in `make test`; `make reliability` runs them full size."""

import os

import pytest

FULL = os.environ.get("RELIABILITY_FULL") == "1"
SEED = int(os.environ.get("RELIABILITY_SEED", "20261122"))


def size(small: int, full: int) -> int:
    return full if FULL else small


@pytest.fixture
def seed() -> int:
    return SEED
