"""The report backlog alarm: the bot hears once when the oldest unwritten report passes the limit, once as it clears."""

from collections.abc import Callable

from app.models import Backlog
from app.notify import Notice, Notifier


class BacklogAlert:
    """Looks at the backlog when asked (each minute, by the scheduler) and tells the bot only when its state changes.

    Raised while the oldest report waiting has waited STATUS_BACKLOG_ALERT_SECONDS or longer; cleared when it no longer
    has. A notice the bot did not take leaves the state as it was, so the next look sends it again.
    """

    def __init__(self, read_backlog: Callable[[], Backlog | None], notifier: Notifier, limit_seconds: float):
        self._read_backlog = read_backlog
        self._notifier = notifier
        self._limit = limit_seconds
        self._raised = False

    async def look(self) -> Notice | None:
        """Send and answer the notice this look calls for, if any."""
        backlog = self._read_backlog()
        age = backlog.oldest_age_seconds if backlog else None
        late = age is not None and age >= self._limit
        if late == self._raised:
            return None
        notice = _raised_notice(backlog, self._limit) if late else _cleared_notice(backlog)
        if await self._notifier.send(notice):
            self._raised = late
        return notice


def _raised_notice(backlog: Backlog | None, limit: float) -> Notice:
    depth = backlog.depth if backlog else 0
    age = backlog.oldest_age_seconds if backlog else 0
    return Notice(
        "warning",
        "Reports not reaching Bitable",
        [
            f"**Waiting**: {depth:,} reports; the oldest for {_duration(age or 0)} (the limit is {_duration(limit)}).",
            "They are kept on disk and written when Feishu takes them again; `/readyz` and the log say why not.",
        ],
    )


def _cleared_notice(backlog: Backlog | None) -> Notice:
    depth = backlog.depth if backlog else 0
    return Notice("ok", "Reports reaching Bitable again", [f"**Waiting**: {depth:,} reports, none past the limit."])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
