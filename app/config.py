from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class StoreKind(StrEnum):
    AUTO = "auto"
    BITABLE = "bitable"
    SQLITE = "sqlite"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting, read from the environment or `.env`; `.env.example` documents each one."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    store: StoreKind = StoreKind.AUTO
    data_dir: Path = Path("data")
    dedup_keys: Annotated[list[str], NoDecode] = []
    max_tasks_per_request: int = Field(10_000, ge=1, le=100_000)

    feishu_app_id: str = ""
    feishu_app_secret: SecretStr = SecretStr("")
    feishu_bitable_app_token: str = ""
    feishu_bitable_table_id: str = ""
    feishu_domain: str = "https://open.feishu.cn"
    feishu_timeout_seconds: float = Field(30.0, gt=0, le=300)
    feishu_retry_attempts: int = Field(6, ge=1, le=20)
    feishu_retry_base_seconds: float = Field(0.5, ge=0, le=60)
    feishu_write_linger_ms: int = Field(20, ge=0, le=1_000)

    _csv = field_validator("dedup_keys", mode="before")(_split_csv)

    @field_validator("feishu_domain")
    @classmethod
    def _domain_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (e.g. https://open.feishu.cn)")
        return value.rstrip("/")

    @property
    def store_kind(self) -> StoreKind:
        if self.store is StoreKind.AUTO:
            return StoreKind.BITABLE if self.feishu_app_id else StoreKind.SQLITE
        return self.store

    def check_bitable(self) -> None:
        missing = [
            name
            for name, value in (
                ("FEISHU_APP_ID", self.feishu_app_id),
                ("FEISHU_APP_SECRET", self.feishu_app_secret.get_secret_value()),
                ("FEISHU_BITABLE_APP_TOKEN", self.feishu_bitable_app_token),
                ("FEISHU_BITABLE_TABLE_ID", self.feishu_bitable_table_id),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"STORE=bitable needs {', '.join(missing)}")


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings once, turning pydantic's report into one line per bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
    if settings.store_kind is StoreKind.BITABLE:
        settings.check_bitable()
    return settings
