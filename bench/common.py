"""What every benchmark shares: the emulator with latency, settings, a result line, and peak memory."""

import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.config import Settings
from tests.feishu.emulator import FeishuEmulator
from tests.support.feishu import APP_TOKEN, TABLE_ID, clear_token_cache

LATENCY = 0.1  # seconds per Feishu call, as the targets are stated
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class Result:
    key: str
    what: str
    target: str
    ratio: float
    met: bool
    details: dict = field(default_factory=dict)

    def emit(self) -> None:
        """The runner reads the last line of each benchmark process."""
        print(json.dumps(asdict(self)), flush=True)


@contextmanager
def emulator(latency: float = LATENCY, rate_limits: bool = True) -> Iterator[FeishuEmulator]:
    clear_token_cache()
    emu = FeishuEmulator(latency=latency, rate_limits=rate_limits).start()
    emu.add_table(APP_TOKEN, TABLE_ID)
    try:
        yield emu
    finally:
        emu.stop()
        clear_token_cache()


def bitable_settings(emu: FeishuEmulator, data_dir: Path, **overrides) -> Settings:
    values = {
        "store": "bitable",
        "feishu_app_id": emu.app_id,
        "feishu_app_secret": emu.app_secret,
        "feishu_bitable_app_token": APP_TOKEN,
        "feishu_bitable_table_id": TABLE_ID,
        "feishu_domain": emu.url,
        "feishu_timeout_seconds": 30,
        "feishu_retry_base_seconds": 0.05,
        "log_level": "WARNING",
    }
    return Settings(_env_file=None, data_dir=data_dir, **(values | overrides))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def smoke_flag() -> bool:
    return "--smoke" in sys.argv
