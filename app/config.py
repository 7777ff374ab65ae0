"""Settings, read once from the environment or .env and checked, naming the setting that is wrong."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class PayloadAs(StrEnum):
    KWARGS = "kwargs"
    ARG = "arg"


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

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", min_length=1)  # `task-manager serve`; the image always listens on 0.0.0.0:80
    port: int = Field(8000, ge=1, le=65_535)
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    log_level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field("json", pattern=r"^(json|text)$")

    store: StoreKind = StoreKind.AUTO
    data_dir: Path = Path("data")
    dedup_keys: Annotated[list[str], NoDecode] = []
    max_tasks_per_request: int = Field(10_000, ge=1, le=100_000)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    server_limit_concurrency: int = Field(1_000, ge=1)
    server_backlog: int = Field(2_048, ge=1)
    server_timeout_keep_alive: int = Field(5, ge=1, le=3_600)

    feishu_app_id: str = ""
    feishu_app_secret: SecretStr = SecretStr("")
    feishu_bitable_app_token: str = ""
    feishu_bitable_table_id: str = ""
    feishu_domain: str = "https://open.feishu.cn"
    feishu_timeout_seconds: float = Field(30.0, gt=0, le=300)
    feishu_retry_attempts: int = Field(6, ge=1, le=20)
    feishu_retry_base_seconds: float = Field(0.5, ge=0, le=60)
    feishu_write_linger_ms: int = Field(20, ge=0, le=1_000)
    feishu_write_max_wait_ms: int = Field(500, ge=0, le=10_000)

    status_flush_seconds: float = Field(2.0, ge=0, le=3_600)
    status_backlog_alert_seconds: float = Field(600.0, gt=0)
    ready_check_seconds: float = Field(30.0, ge=0, le=86_400)
    stats_cache_seconds: float = Field(30.0, ge=0, le=86_400)

    feishu_robot_webhook_url: str = ""
    feishu_robot_secret: SecretStr = SecretStr("")

    celery_app_name: str = "wqb"
    celery_broker_url: SecretStr = SecretStr("")  # may carry a password
    celery_task_name: str = "wqb.tasks.simulate_task"
    celery_queue: str = Field("celery", min_length=1)
    celery_payload_as: PayloadAs = PayloadAs.KWARGS
    celery_queue_max_priority: int | None = Field(None, ge=1, le=255)
    celery_default_priority: int | None = Field(None, ge=0, le=255)
    celery_high_priority: int | None = Field(None, ge=0, le=255)
    broker_timeout_seconds: float = Field(10.0, gt=0, le=300)

    replenish_interval_hours: float = Field(4.0, gt=0, le=24 * 7)
    replenish_threshold: int = Field(3_000, ge=0)
    replenish_batch_size: int = Field(500, ge=1, le=10_000)
    replenish_on_startup: bool = False
    scheduler_enabled: bool = True
    lease_timeout_hours: float = Field(24.0, ge=0)
    max_attempts: int = Field(3, ge=1)

    _csv = field_validator("dedup_keys", "api_keys", mode="before")(_split_csv)

    @field_validator("feishu_robot_webhook_url")
    @classmethod
    def _webhook_is_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be the bot's https:// webhook address")
        return value

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

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url.get_secret_value()

    @property
    def broker_scheme(self) -> str:
        """amqp, redis, or filesystem for the embedded default."""
        scheme = self.broker_url.partition("://")[0].partition("+")[0] or "filesystem"
        return {"pyamqp": "amqp", "amqps": "amqp", "rediss": "redis", "sentinel": "redis"}.get(scheme, scheme)

    @property
    def priorities(self) -> tuple[int, int]:
        """(default, high): RabbitMQ takes larger as more urgent, Redis takes 0 as most urgent."""
        default, high = (6, 0) if self.broker_scheme == "redis" else (1, 9)
        return (
            default if self.celery_default_priority is None else self.celery_default_priority,
            high if self.celery_high_priority is None else self.celery_high_priority,
        )

    def check_priorities(self) -> None:
        default, high = self.priorities
        if self.broker_scheme == "redis":
            if max(default, high) > 9:
                raise ConfigError("CELERY_DEFAULT_PRIORITY and CELERY_HIGH_PRIORITY must be 0-9 on Redis")
            if _redis_step(high) >= _redis_step(default):
                raise ConfigError(
                    f"CELERY_HIGH_PRIORITY ({high}) must be below CELERY_DEFAULT_PRIORITY ({default}), in a lower "
                    "one of kombu's steps 0, 3, 6, 9: on Redis 0 is the most urgent"
                )
        elif self.broker_scheme == "amqp":
            if high <= default:
                raise ConfigError(
                    f"CELERY_HIGH_PRIORITY ({high}) must be above CELERY_DEFAULT_PRIORITY ({default}): "
                    "on RabbitMQ a larger number is more urgent"
                )
            ceiling = self.celery_queue_max_priority
            if ceiling is not None and default >= ceiling:
                raise ConfigError(
                    f"CELERY_DEFAULT_PRIORITY ({default}) must be below CELERY_QUEUE_MAX_PRIORITY ({ceiling}): "
                    "RabbitMQ caps priorities at the queue's maximum, so both would be equal"
                )

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


def _redis_step(priority: int) -> int:
    """The list kombu files a Redis message in: priorities are rounded down to 0, 3, 6 or 9."""
    return max(step for step in (0, 3, 6, 9) if step <= priority)


S = TypeVar("S", bound=Settings)


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


def load_settings(kind: type[S] = Settings, **overrides: object) -> S:
    """Read the settings once, turning pydantic's report into one line per bad setting."""
    try:
        settings = kind(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
    if settings.store_kind is StoreKind.BITABLE:
        settings.check_bitable()
    settings.check_priorities()
    return settings
