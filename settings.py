"""Every option of the service, read once from the environment and validated at startup."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./task-service.db"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


def normalise_database_url(url: str) -> str:
    """Accept the URL spellings people paste and return the async driver's form."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_ignore_empty=True)

    environment: Environment = Environment.DEVELOPMENT
    database_url: str = DEFAULT_DATABASE_URL
    broadcast_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_key: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    # Connections kept open per process: at least the concurrent requests expected (each
    # holds one while it runs); overflow connections are opened and closed per request.
    db_pool_size: int = Field(20, ge=1, le=1000)
    db_max_overflow: int = Field(0, ge=0, le=1000)
    db_pool_pre_ping: bool = True
    heartbeat_timeout_seconds: float = Field(90, gt=0)
    lease_seconds: float | None = Field(None, gt=0)
    reaper_interval_seconds: float = Field(5, gt=0)
    default_task_timeout_minutes: int = Field(120, ge=1)
    max_concurrent_tasks_per_agent: int = Field(3, ge=1, le=1000)
    default_max_attempts: int = Field(4, ge=1, le=1000)
    retry_backoff_seconds: float = Field(10, ge=0)
    retry_backoff_max_seconds: float = Field(900, ge=0)
    soft_delete_retention_days: float = Field(30, ge=0)
    idempotency_retention_hours: float = Field(24, gt=0)
    # Mutations per caller, in the `limits` notation ("600/minute", "20/second;600/minute");
    # unset or "off": no limit.
    rate_limit: str | None = None
    rate_limit_storage_url: str = "memory://"
    max_query_depth: int = Field(12, ge=1)
    max_aliases: int = Field(30, ge=1)
    max_tokens: int = Field(5000, ge=10)
    max_page_size: int = Field(500, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    max_subscriptions_per_connection: int = Field(20, ge=1)
    max_query_cost: int = Field(50_000, ge=1)
    max_directives: int = Field(50, ge=0)
    max_batch_operations: int = Field(10, ge=1, le=100)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_json_depth: int = Field(32, ge=2, le=500)
    ws_init_timeout_seconds: float = Field(10, gt=0)
    statement_timeout_seconds: float = Field(30, ge=0)
    max_subscriber_lag: int = Field(10_000, ge=1)
    stats_min_interval_seconds: float = Field(0.5, ge=0)
    ws_keepalive_seconds: float = Field(15, gt=0)
    # permessage-deflate on WebSockets: off by default, since with many subscribers the
    # per-message compression costs more server CPU than the bytes it saves on a LAN.
    ws_compression: bool = False
    # Known queries and mutations POSTed as JSON skip strawberry's HTTP view (api/direct.py);
    # off sends every request through it (for comparison: bench/run_all.py --server-env).
    graphql_direct: bool = True
    graphiql: bool | None = None
    introspection: bool | None = None
    auto_migrate: bool | None = None

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        url = normalise_database_url(value.strip())
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        return url

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and len(value.strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value.strip() if value is not None else None

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in {"off", "none", "0"}:
            return None
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError('must look like "600/minute" or "20/second;600/minute", or be "off"') from None
        return value.strip()

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must be memory:// or redis://host:port[/db]")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.lease_seconds is None:
            self.lease_seconds = self.heartbeat_timeout_seconds
        production = self.environment is Environment.PRODUCTION
        if self.graphiql is None:
            self.graphiql = not production
        if self.introspection is None:
            self.introspection = not production
        if self.auto_migrate is None:
            self.auto_migrate = self.is_sqlite
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def auth_enabled(self) -> bool:
        """API_KEY set: every GraphQL operation needs the admin key or an agent token."""
        return self.api_key is not None

    @property
    def lease(self) -> float:
        assert self.lease_seconds is not None
        return self.lease_seconds

    @property
    def effective_broadcast_url(self) -> str:
        """The bus: BROADCAST_URL, else LISTEN/NOTIFY on our own PostgreSQL, else memory."""
        if self.broadcast_url:
            return self.broadcast_url
        if self.is_sqlite:
            return "memory://"
        return "postgres://" + self.database_url.split("://", 1)[1]


class SettingsError(Exception):
    """An environment variable has an invalid value; the message names it in one line."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and overrides), or raise SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid {name}: {message}") from None
