"""Every rule of core/settings.py: what is refused, that the message names the variable, and
that the message never contains the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import (
    DEMO_COOKIE_KEY,
    ConfigError,
    Settings,
    get_settings,
    is_placeholder,
    key_mode,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
GOOD_COOKIE = "k9R2vQ7wL4xN8mT1pZ6sB3yH5cF0jD2gA7eU9rW4"
GOOD_WEBHOOK = "whsec_9f8Kq2LmX7vN4pR1tZ6wB3yH5cJ0dG8s"
GOOD_LIVE_KEY = "sk_live_51Hq8Zr2LmX7vN4pR1tZ6wB3yH5cJ0dG8sK9"
GOOD_TEST_KEY = "sk_test_51Hq8Zr2LmX7vN4pR1tZ6wB3yH5cJ0dG8sK9"
GOOD_AUDIT_KEY = "v3Qm8Lz1Rk7Tb2Ny6Hc9Wd4Jf0Sg5Px8Ua1E"


def production(**env: str) -> dict[str, str]:
    """A valid production environment, with `env` overriding it."""
    return {
        "APP_ENV": "production",
        "STRIPE_WEBHOOK_SECRETS": GOOD_WEBHOOK,
        "COOKIE_KEY": GOOD_COOKIE,
        "AUDIT_CHECKPOINT_KEY": GOOD_AUDIT_KEY,
        "STRIPE_SECRET_KEY": GOOD_LIVE_KEY,
        "DATABASE_URL": "postgresql+psycopg://payments@db.internal:5432/payments",
        **env,
    }


def load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(monkeypatch, env)
    return str(caught.value)


def test_defaults_are_the_embedded_development_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, {})
    assert settings.app_env == "development"
    assert settings.database_url == "sqlite:///data/payments.db"
    assert settings.stripe_webhook_tolerance == 300
    assert settings.webhook_secrets == []
    assert settings.expected_livemode is None


def test_a_valid_production_setup_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, production())
    assert settings.is_production
    assert settings.expected_livemode is True
    assert settings.webhook_secrets == [GOOD_WEBHOOK]
    for secret in (GOOD_WEBHOOK, GOOD_COOKIE, GOOD_LIVE_KEY):
        assert secret not in repr(settings)
        assert secret not in str(settings.model_dump())


def test_webhook_secrets_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, {"STRIPE_WEBHOOK_SECRETS": " whsec_new , whsec_old ,, "})
    assert settings.webhook_secrets == ["whsec_new", "whsec_old"]
    assert settings.require_webhook_secrets() == ["whsec_new", "whsec_old"]


def test_the_receiver_needs_a_webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, {"STRIPE_WEBHOOK_SECRETS": " , "})
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRETS"):
        settings.require_webhook_secrets()


# name, value, variable the message must name
INVALID_ANYWHERE = [
    ("STRIPE_WEBHOOK_TOLERANCE", "0"),
    ("STRIPE_WEBHOOK_TOLERANCE", "-300"),
    ("STRIPE_WEBHOOK_TOLERANCE", "five-minutes"),
    ("SESSION_HOURS", "0"),
    ("SESSION_HOURS", "-1"),
    ("BURST_WINDOW_MINUTES", "0"),
    ("BURST_THRESHOLD", "0"),
    ("APP_ENV", "prod-secretish"),
]


@pytest.mark.parametrize(("name", "value"), INVALID_ANYWHERE)
@pytest.mark.parametrize("app_env", ["development", "production"])
def test_invalid_values_are_refused_in_any_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, app_env: str
) -> None:
    base = production() if app_env == "production" else {}
    message = refused(monkeypatch, {**base, name: value})
    assert name in message
    if len(value) > 2:  # "0" may well appear in any sentence
        assert value not in message


@pytest.mark.parametrize(
    ("env", "name", "secret"),
    [
        pytest.param(
            {"STRIPE_WEBHOOK_SECRETS": ""}, "STRIPE_WEBHOOK_SECRETS", None, id="no-secret"
        ),
        pytest.param(
            {"STRIPE_WEBHOOK_SECRETS": "whsec_..."},
            "STRIPE_WEBHOOK_SECRETS",
            "whsec_...",
            id="whsec_...",
        ),
        pytest.param(
            {"STRIPE_WEBHOOK_SECRETS": f"{GOOD_WEBHOOK},whsec_REPLACE_me_9f8Kq2LmX7"},
            "STRIPE_WEBHOOK_SECRETS",
            "whsec_REPLACE_me_9f8Kq2LmX7",
            id="one-of-two-secrets-placeholder",
        ),
        pytest.param(
            {"STRIPE_SECRET_KEY": "sk_test_YOUR_KEY_9f8Kq2LmX7"},
            "STRIPE_SECRET_KEY",
            "sk_test_YOUR_KEY_9f8Kq2LmX7",
            id="sk_test_YOUR",
        ),
        pytest.param(
            {"STRIPE_SECRET_KEY": "sk_live_..."},
            "STRIPE_SECRET_KEY",
            "sk_live_...",
            id="sk_live_...",
        ),
        pytest.param(
            {"STRIPE_SECRET_KEY": GOOD_TEST_KEY},
            "STRIPE_SECRET_KEY",
            GOOD_TEST_KEY,
            id="test-key-in-production",
        ),
        pytest.param(
            {"STRIPE_SECRET_KEY": "rk_test_51Hq8Zr2LmX7vN4pR1tZ6wB3y"},
            "STRIPE_SECRET_KEY",
            "rk_test_51Hq8Zr2LmX7vN4pR1tZ6wB3y",
            id="restricted-test-key-in-production",
        ),
        pytest.param(
            {"STRIPE_SECRET_KEY": "pk_live_51Hq8Zr2LmX7vN4pR1tZ6wB3y"},
            "STRIPE_SECRET_KEY",
            "pk_live_51Hq8Zr2LmX7vN4pR1tZ6wB3y",
            id="publishable-key-is-not-a-secret-key",
        ),
        pytest.param(
            {"COOKIE_KEY": "k9R2vQ7wL4xN8mT1pZ6sB3yH5cF0jD2"},
            "COOKIE_KEY",
            "k9R2vQ7wL4xN8mT1pZ6sB3yH5cF0jD2",
            id="cookie-key-31-chars",
        ),
        pytest.param(
            {"COOKIE_KEY": DEMO_COOKIE_KEY}, "COOKIE_KEY", DEMO_COOKIE_KEY, id="demo-cookie"
        ),
        pytest.param(
            {"AUDIT_CHECKPOINT_KEY": "CHANGE_ME_TO_A_LONG_RANDOM_STRING"},
            "AUDIT_CHECKPOINT_KEY",
            "CHANGE_ME_TO_A_LONG_RANDOM_STRING",
            id="audit-key-placeholder",
        ),
        pytest.param(
            {"STRIPE_API_BASE": "http://127.0.0.1:8420"},
            "STRIPE_API_BASE",
            "http://127.0.0.1:8420",
            id="stand-in-in-production",
        ),
    ],
)
def test_production_refuses(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, secret: str | None
) -> None:
    message = refused(monkeypatch, production(**env))
    assert name in message
    assert "production" in message
    if secret:
        assert secret not in message


def test_production_lists_every_problem_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    env = production(
        STRIPE_WEBHOOK_SECRETS="whsec_...",
        COOKIE_KEY="short-9f8Kq2",
        STRIPE_SECRET_KEY=GOOD_TEST_KEY,
    )
    message = refused(monkeypatch, env)
    for name in ("STRIPE_WEBHOOK_SECRETS", "COOKIE_KEY", "STRIPE_SECRET_KEY"):
        assert name in message
    for value in ("short-9f8Kq2", GOOD_TEST_KEY):
        assert value not in message


def test_production_refuses_the_demo_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 [B]: checkpoints signed with a published key prove nothing."""
    env = production()
    del env["AUDIT_CHECKPOINT_KEY"]
    assert "AUDIT_CHECKPOINT_KEY" in refused(monkeypatch, env)


def test_exactly_32_characters_is_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(monkeypatch, production(COOKIE_KEY=GOOD_COOKIE[:32])).is_production


def shipped_values() -> list[tuple[str, str]]:
    """Every non-empty value shipped in .env.example and the Makefile's demo defaults."""
    found = []
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z_]+)=(\S+)", line.strip())
        if match:
            found.append((match[1], match[2]))
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.fullmatch(r"export ([A-Z_]+) \?= (\S+)", line.strip())
        if match:
            found.append((match[1], match[2]))
    return found


SECRET_NAMES = ("STRIPE_WEBHOOK_SECRETS", "STRIPE_SECRET_KEY", "COOKIE_KEY")


def test_the_repository_ships_placeholders_for_every_secret() -> None:
    names = {name for name, _ in shipped_values()}
    assert set(SECRET_NAMES) <= names


@pytest.mark.parametrize(
    ("name", "value"),
    [pytest.param(n, v, id=f"{n}={v}") for n, v in shipped_values() if n in SECRET_NAMES],
)
def test_production_refuses_every_value_shipped_in_the_repository(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = refused(monkeypatch, production(**{name: value}))
    assert name in message
    assert value not in message


def test_a_dotenv_file_is_read_and_checked_like_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "APP_ENV=production\nSTRIPE_WEBHOOK_SECRETS=whsec_YOUR_SECRET_HERE\n"
        f"COOKIE_KEY={GOOD_COOKIE}\n"
    )
    message = refused(monkeypatch, {})
    assert "STRIPE_WEBHOOK_SECRETS" in message
    assert "whsec_YOUR_SECRET_HERE" not in message


def test_get_settings_is_built_on_first_use_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_TOLERANCE", "120")
    first = get_settings()
    monkeypatch.setenv("STRIPE_WEBHOOK_TOLERANCE", "60")
    assert get_settings() is first and first.stripe_webhook_tolerance == 120
    get_settings.cache_clear()
    assert get_settings().stripe_webhook_tolerance == 60


@pytest.mark.parametrize(
    ("key", "mode", "livemode"),
    [
        ("sk_live_abc", "live", True),
        ("rk_live_abc", "live", True),
        ("sk_test_abc", "test", False),
        ("rk_test_abc", "test", False),
        ("pk_live_abc", None, None),
        ("whatever", None, None),
    ],
)
def test_key_mode_decides_which_events_belong_here(
    monkeypatch: pytest.MonkeyPatch, key: str, mode: str | None, livemode: bool | None
) -> None:
    assert key_mode(key) == mode
    assert load(monkeypatch, {"STRIPE_SECRET_KEY": key}).expected_livemode is livemode


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        ("whsec_...", True),
        ("sk_test_...", True),
        ("", True),
        ("whsec_YOUR_SECRET_HERE", True),
        ("CHANGE_ME_TO_A_LONG_RANDOM_STRING", True),
        ("sk_test_your_key", True),
        (GOOD_WEBHOOK, False),
        (GOOD_LIVE_KEY, False),
        (GOOD_COOKIE, False),
    ],
)
def test_is_placeholder(value: str, placeholder: bool) -> None:
    assert is_placeholder(value) is placeholder
