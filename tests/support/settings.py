"""Settings for tests: no .env file, a temporary DATA_DIR, and the emulator's table for the Bitable store."""

from pathlib import Path

from app.config import Settings


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, **overrides)


def emulator_table(emu) -> dict[str, object]:
    """The settings that point the Bitable store at the emulator's table."""
    return {
        "store": "bitable",
        "feishu_app_id": emu.app_id,
        "feishu_app_secret": emu.app_secret,
        "feishu_bitable_app_token": "bascnTEST",
        "feishu_bitable_table_id": "tblTEST",
        "feishu_domain": emu.url,
        "feishu_timeout_seconds": 5,
        "feishu_retry_base_seconds": 0.01,
        "feishu_write_linger_ms": 5,
    }


def bitable_settings(emu, data_dir: Path, **overrides) -> Settings:
    return make_settings(data_dir, **(emulator_table(emu) | overrides))
