"""Reliability suites: small fixed-seed versions run in `make test`; `make reliability` runs them full size."""

import pytest

from tests.support.modes import SEED


@pytest.fixture
def seed() -> int:
    return SEED
