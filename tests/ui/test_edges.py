"""The console's edges through the entrypoint (AppTest): what the login page says, what a refusal
looks like, and the replay buttons after a dry run of an event that does not exist (issue 13,
finding 9). The unknown page lives in the browser's address bar: see test_support_browser.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.db import make_engine
from demo.standin import StandIn, start_in_thread
from tests.support.apptest import app_as, refused


def test_the_login_page_names_the_product_and_the_environment(sqlite_url: str) -> None:
    """Finding 9: the login page named no product or environment."""
    at = app_as(None, sqlite_url)
    assert [t.value for t in at.main.title] == ["Payments console"]
    assert [c.value for c in at.main.caption] == [
        "Development · demo data, offline Stripe stand-in"
    ]


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"STRIPE_SECRET_KEY": "sk_test_h13a0000000000"}, "Development · Stripe test mode"),
        (
            {
                "STRIPE_SECRET_KEY": "sk_test_h13a0000000000",
                "STRIPE_API_BASE": "http://127.0.0.1:9",
            },
            "Development · Stripe stand-in (STRIPE_API_BASE)",
        ),
    ],
)
def test_the_login_page_says_which_stripe_it_uses(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], shown: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    at = app_as(None, sqlite_url)
    assert [c.value for c in at.main.caption] == [shown]
    assert "sk_test_h13a" not in str(at.main.caption)  # the key itself is never shown


def test_a_refusal_has_a_title_and_a_way_back(sqlite_url: str) -> None:
    """Finding 9: the refusal page was a bare red box with no way back."""
    at = app_as("support", sqlite_url, page="pages/webhooks.py")
    assert not at.exception, at.exception
    assert refused(at)
    assert [t.value for t in at.main.title] == ["Not available to your role"]
    links = [str(link.proto.label) for link in at.main.get("page_link")]
    assert links == ["Back to the console"]


@pytest.fixture
def standin(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """The offline Stripe stand-in on 127.0.0.1, in a thread, stopped after the test."""
    engine = make_engine(sqlite_url)
    stand = StandIn(engine)
    stand.seed()
    server, url = start_in_thread(stand)
    monkeypatch.setenv("STRIPE_API_BASE", url)
    yield stand
    server.shutdown()
    server.server_close()
    engine.dispose()


@pytest.mark.usefixtures("standin")
def test_replay_for_real_stays_disabled_after_a_dry_run_of_a_missing_event(
    sqlite_url: str,
) -> None:
    """Finding 9: "Replay for real" became enabled after a dry run of an event that does not
    exist."""
    at = app_as("admin", sqlite_url, page="pages/operations.py")
    at.text_input(key="ops_event").input("evt_does_not_exist").run()
    next(b for b in at.button if b.label == "Dry run").click().run()
    assert not at.exception, at.exception
    assert at.main.error, "the dry run should say the event is unknown"
    assert next(b for b in at.button if b.label == "Replay for real").disabled
