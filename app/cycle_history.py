"""The recent replenish cycles' reports, kept in DATA_DIR so /api/stats of any process on it shows them."""

import logging
import os
import tempfile
from pathlib import Path

from pydantic import TypeAdapter

from app.models import RECENT_CYCLES, ReplenishReport
from app.paths import DataDir

log = logging.getLogger(__name__)

_REPORTS = TypeAdapter(list[ReplenishReport])


class CycleHistory:
    """Up to RECENT_CYCLES reports, newest first, in one JSON file replaced whole (a reader never sees half of one).

    Cycles add under the replenish lock, so two processes never add at once.
    """

    def __init__(self, data_dir: Path, keep: int = RECENT_CYCLES):
        self._path = DataDir(data_dir).replenish_history
        self._keep = keep

    def recent(self) -> list[ReplenishReport]:
        """Newest first; an unreadable or damaged file reads as no history (the next cycle writes a new one)."""
        try:
            return _REPORTS.validate_json(self._path.read_bytes())[: self._keep]
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("could not read the cycle history %s: %s", self._path, exc)
            return []

    def add(self, report: ReplenishReport) -> None:
        reports = [report, *self.recent()][: self._keep]
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self._path.name}-", dir=self._path.parent)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(_REPORTS.dump_json(reports))
                os.replace(name, self._path)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a full or read-only DATA_DIR: stats show older cycles, the bot still hears
            log.error("could not keep the cycle's report in %s: %s", self._path, exc)
