"""The pool's rules, the cycle and the dispatcher over one store, with a fake publisher, a recording notifier and a
hand-moved clock: the fixtures of tests/test_service.py, tests/test_replenish.py and tests/test_dispatch.py."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.claims import ClaimJournal
from app.dispatch import Dispatcher
from app.main import Services, wire
from app.replenish import ReplenishCycle
from app.service import TaskService
from tests.support.fakes import Clock, FakePublisher, RecordingNotifier
from tests.support.settings import make_settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[ClaimJournal]:
    journal = ClaimJournal(tmp_path / "svc" / "claims.db")
    journal.open()
    yield journal
    journal.close()


@pytest.fixture
def make_services(store, tmp_path, journal, publisher, notifier, clock) -> Callable[..., Services]:
    def build(**overrides) -> Services:
        settings = make_settings(tmp_path / "svc", **({"replenish_batch_size": 10} | overrides))
        return wire(store, settings, publisher=publisher, notifier=notifier, journal=journal, clock=clock)

    return build


@pytest.fixture
def services(make_services) -> Services:
    return make_services()


@pytest.fixture
def service(services) -> TaskService:
    return services.tasks


@pytest.fixture
def cycle(services) -> ReplenishCycle:
    return services.cycle


@pytest.fixture
def dispatcher(services) -> Dispatcher:
    return services.dispatcher
