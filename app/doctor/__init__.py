"""`python -m app doctor`: checks a deployment end to end, one line per check, each failure with its fix.

Start-up runs the read-only part of the same checks (no bot probe, no broker declare) and refuses to start on a
failure, with the same lines; an unreachable broker or a missing queue is only a warning there, since the workers
own the queue and may start after the service (`/readyz` and every cycle report them).
"""

import asyncio
import logging
import tempfile
from collections.abc import Callable

from app.config import ConfigError, Settings, StoreKind
from app.doctor.bot import bot_checks
from app.doctor.checks import Check, Status, fail, ok, warn
from app.doctor.queue import broker_checks
from app.paths import DOCTOR_PROBE_PREFIX, DataDir

__all__ = ["Check", "StartupRefused", "Status", "exit_code", "run_doctor", "startup_checks"]

log = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """A start-up check failed; the message holds each failed check's line and its fix."""


async def run_doctor(load: Callable[[], Settings], *, send_test_card: bool = False) -> list[Check]:
    """Every check, the writes included (a bot probe, a broker re-declare of an existing queue; a card on request)."""
    try:
        settings = load()
    except ConfigError as exc:
        return [fail("settings", str(exc), "fix the named setting in .env or the environment (see .env.example)")]
    return await _checks(settings, startup=False, send_test_card=send_test_card)


async def startup_checks(settings: Settings) -> list[Check]:
    """The read-only checks; raise StartupRefused when one that blocks start-up failed, log the rest."""
    checks = await _checks(settings, startup=True, send_test_card=False)
    refused = [c for c in checks if c.failed and c.blocks_startup]
    for check in checks:
        if check in refused:
            log.error("start-up check %s", check.line())
        elif check.status in (Status.WARN, Status.FAIL):
            log.warning("start-up check %s", check.line())
    if refused:
        raise StartupRefused("start-up checks failed:\n" + "\n".join(c.line() for c in refused))
    return checks


async def _checks(settings: Settings, *, startup: bool, send_test_card: bool) -> list[Check]:
    """Feishu, the bot and the broker side by side (an unreachable broker takes BROKER_TIMEOUT_SECONDS)."""
    store = _bitable_checks(settings) if settings.store_kind is StoreKind.BITABLE else _sqlite_checks(settings)
    groups = await asyncio.gather(
        store,
        bot_checks(settings, probe=not startup, send_test_card=send_test_card),
        broker_checks(settings, probe_max_priority=not startup),
    )
    return [_settings_check(settings), data_dir_check(settings), *(check for group in groups for check in group)]


async def _sqlite_checks(settings: Settings) -> list[Check]:
    return [ok("store", f"the embedded SQLite store at {DataDir(settings.data_dir).tasks_db}")]


def _settings_check(settings: Settings) -> Check:
    if not settings.api_keys:
        detail = "API_KEYS is empty: every /api route is open to anyone who can reach this port"
        return warn("settings", detail, "set API_KEYS (comma-separated keys)")
    return ok("settings", f"valid: store {settings.store_kind}, broker {settings.broker_scheme}")


def data_dir_check(settings: Settings) -> Check:
    """The index, the claim journal and the locks live there: a file must be creatable and syncable."""
    folder = settings.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=DOCTOR_PROBE_PREFIX) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        fix = "create it and let the service's user write there (Docker: a volume at /data)"
        return fail("data_dir", f"DATA_DIR {folder} is not writable: {exc.strerror or exc}", fix)
    return ok("data_dir", f"{folder.resolve()} is writable")


async def _bitable_checks(settings: Settings) -> list[Check]:
    from app.doctor.feishu import feishu_checks
    from app.store.bitable import BitableTaskStore

    store = BitableTaskStore.from_settings(settings)  # not opened: its table and index are used one by one
    try:
        return await feishu_checks(store)
    finally:
        await store.table.aclose()


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.failed for c in checks) else 0
