"""Typed settings read from the environment, built on first use, never at import time.

Secrets are `SecretStr`: their value never appears in a repr, a log line or an error.
Errors name the variable and what is wrong with it, never the value.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(Exception):
    """The configuration cannot be used; the message is safe to print."""


# Values that ship in .env.example, the Makefile's demo defaults or documentation: never
# acceptable in production.
PLACEHOLDER_MARKERS = (
    "YOUR",
    "CHANGE_ME",
    "REPLACE",
    "EXAMPLE",
    "PLACEHOLDER",
    "XXXX",
    "NOT_A_REAL",
    "DEMO_LOCAL",
)
DEMO_COOKIE_KEY = "demo-cookie-key-not-for-production-use"
DEMO_AUDIT_KEY = "demo-audit-key-not-for-production-use"
MIN_COOKIE_KEY_CHARS = 32


def is_placeholder(value: str) -> bool:
    upper = value.upper()
    if value.strip() in {"whsec_...", "sk_test_...", "sk_live_...", "whsec_", "sk_test_", ""}:
        return True
    return any(marker in upper for marker in PLACEHOLDER_MARKERS)


def key_mode(key: str) -> Literal["live", "test"] | None:
    """`live` or `test` from a Stripe secret or restricted key's prefix."""
    for prefix in ("sk_", "rk_"):
        if key.startswith(prefix + "live_"):
            return "live"
        if key.startswith(prefix + "test_"):
            return "test"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "sqlite:///data/payments.db"
    app_env: Literal["development", "production"] = "development"
    stripe_secret_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    stripe_webhook_tolerance: int = 300
    auth_config: Path = Path("config/users.yaml")
    cookie_key: SecretStr = SecretStr(DEMO_COOKIE_KEY)
    session_hours: float = 8.0
    burst_window_minutes: int = 60
    burst_threshold: int = 4
    alert_webhook_url: str | None = None
    sentry_dsn: SecretStr | None = None
    # Retention (python -m core retention), in days.
    retention_deliveries_days: int = 90
    retention_rejection_samples_days: int = 30
    retention_event_bodies_days: int = 90

    # issue 14: the dashboard's address, put in front of the links in alert messages
    dashboard_url: str | None = None

    # Issue 12 part B (personal data, login abuse, audit anchoring).
    # Signs audit checkpoints (and keys the pseudonyms the audit log keeps instead of emails).
    audit_checkpoint_key: SecretStr = SecretStr(DEMO_AUDIT_KEY)
    # Where `python -m core audit checkpoint` appends signed checkpoints (owner-only file).
    audit_checkpoint_path: Path = Path("data/audit-checkpoints.jsonl")
    # A header set by your own reverse proxy naming the client's address (e.g. X-Real-IP);
    # empty: the address of the connection itself (see README "Logging in").
    login_client_header: str = ""

    # How often `python -m core alerts` is meant to run; the Overview calls it overdue after
    # twice this without a run.
    alert_interval_minutes: int = Field(default=2, ge=1)

    @field_validator("stripe_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "stripe_secret_key", "stripe_api_base", "alert_webhook_url", "sentry_dsn", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("stripe_webhook_tolerance")
    @classmethod
    def _positive_tolerance(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive number of seconds (0 would disable replay checks)")
        return value

    @field_validator("session_hours")
    @classmethod
    def _positive_hours(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of hours")
        return value

    @field_validator(
        "burst_window_minutes",
        "burst_threshold",
        "retention_deliveries_days",
        "retention_rejection_samples_days",
        "retention_event_bodies_days",
    )
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.get_secret_value() for s in self.stripe_webhook_secrets]

    @property
    def expected_livemode(self) -> bool | None:
        """Which events belong to this deployment: decided by the key's mode, if there is a key."""
        if self.stripe_secret_key is None:
            return None
        mode = key_mode(self.stripe_secret_key.get_secret_value())
        return None if mode is None else mode == "live"

    def check_production(self) -> None:
        """Refuse placeholder or weak secrets in production. Messages name variables only."""
        if not self.is_production:
            return
        problems: list[str] = []
        if not self.stripe_webhook_secrets:
            problems.append("STRIPE_WEBHOOK_SECRETS is not set")
        elif any(is_placeholder(s) for s in self.webhook_secrets):
            problems.append("STRIPE_WEBHOOK_SECRETS holds a placeholder value")
        cookie = self.cookie_key.get_secret_value()
        if cookie == DEMO_COOKIE_KEY or is_placeholder(cookie):
            problems.append("COOKIE_KEY holds a placeholder or demo value")
        elif len(cookie) < MIN_COOKIE_KEY_CHARS:
            problems.append(f"COOKIE_KEY is shorter than {MIN_COOKIE_KEY_CHARS} characters")
        audit_key = self.audit_checkpoint_key.get_secret_value()
        if audit_key == DEMO_AUDIT_KEY or is_placeholder(audit_key):
            problems.append("AUDIT_CHECKPOINT_KEY holds a placeholder or demo value")
        elif len(audit_key) < MIN_COOKIE_KEY_CHARS:
            problems.append(
                f"AUDIT_CHECKPOINT_KEY is shorter than {MIN_COOKIE_KEY_CHARS} characters"
            )
        if self.stripe_secret_key is not None:
            key = self.stripe_secret_key.get_secret_value()
            if is_placeholder(key):
                problems.append("STRIPE_SECRET_KEY holds a placeholder value")
            elif key_mode(key) != "live":
                problems.append("STRIPE_SECRET_KEY is not a live key but APP_ENV is production")
        if self.stripe_api_base:
            problems.append("STRIPE_API_BASE points at a stand-in but APP_ENV is production")
        if problems:
            raise ConfigError("Refusing to start in production: " + "; ".join(problems) + ".")

    def require_webhook_secrets(self) -> list[str]:
        if not self.stripe_webhook_secrets:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRETS is not set: the receiver cannot verify deliveries."
            )
        return self.webhook_secrets

    # --- receiver edge (issue 11 A): seconds; see receiver/edge.py and the README ---
    receiver_header_timeout: float = 10.0  # a request's headers must arrive whole within this
    receiver_body_timeout: float = 20.0  # and its body within this after them
    receiver_db_timeout: float = 2.0  # a delivery or /healthz waits this long for the database

    @field_validator("receiver_header_timeout", "receiver_body_timeout", "receiver_db_timeout")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and `.env`); raise ConfigError on bad values."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for error in exc.errors(include_input=False, include_url=False):
            name = "_".join(str(p) for p in error["loc"][:1]).upper()
            parts.append(f"{name}: {error['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(parts) + ".") from None
    settings.check_production()
    return settings


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use. Tests call `get_settings.cache_clear()`."""
    return load_settings()
