"""The report backlog alarm: one notice when the oldest unwritten report passes the limit, one when it clears."""

from dataclasses import dataclass, field

from app.backlog_alert import BacklogAlert
from app.models import Backlog
from app.notify import Notice
from tests.support.fakes import RecordingNotifier

LIMIT = 600.0


class Backlogs:
    """The store's backlog as the test sets it."""

    def __init__(self) -> None:
        self.now: Backlog | None = None

    def __call__(self) -> Backlog | None:
        return self.now


@dataclass
class RefusingBot:
    """A bot that refuses the first `refusals` notices, then takes the rest."""

    refusals: int
    tried: list[Notice] = field(default_factory=list)

    async def send(self, notice: Notice) -> bool:
        self.tried.append(notice)
        return len(self.tried) > self.refusals

    async def close(self) -> None:
        pass


async def test_the_bot_hears_once_when_the_backlog_turns_late_and_once_when_it_clears():
    backlogs, notifier = Backlogs(), RecordingNotifier()
    alert = BacklogAlert(backlogs, notifier, LIMIT)
    looks = [
        None,
        Backlog(0, None),
        Backlog(40, LIMIT - 0.1),
        Backlog(41, LIMIT),  # late
        Backlog(300, LIMIT + 60),
        Backlog(900, LIMIT * 5),
        Backlog(12, 3.0),  # cleared
        Backlog(0, None),
        Backlog(2, LIMIT + 1),  # late again
    ]
    for backlog in looks:
        backlogs.now = backlog
        await alert.look()
    assert [(n.level, n.title) for n in notifier.notices] == [
        ("warning", "Reports not reaching Bitable"),
        ("ok", "Reports reaching Bitable again"),
        ("warning", "Reports not reaching Bitable"),
    ]
    assert "41 reports; the oldest for 10 min 0 s (the limit is 10 min 0 s)" in notifier.notices[0].lines[0]


async def test_a_store_without_a_backlog_never_alarms():
    notifier = RecordingNotifier()
    alert = BacklogAlert(lambda: None, notifier, LIMIT)
    for _ in range(3):
        assert await alert.look() is None
    assert notifier.notices == []


async def test_a_notice_the_bot_refused_is_sent_again_at_the_next_look():
    backlogs, bot = Backlogs(), RefusingBot(refusals=1)
    alert = BacklogAlert(backlogs, bot, LIMIT)
    backlogs.now = Backlog(5, LIMIT * 2)
    await alert.look()
    await alert.look()
    await alert.look()
    assert [n.level for n in bot.tried] == ["warning", "warning"]
