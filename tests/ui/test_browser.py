"""A real-browser journey: the dashboard served by `streamlit run`, driven by Debian's chromium
through Playwright, as each demo role; and the login cookie: it survives a reload, and a copy of
it dies with its session (logout, an admin's revocation, a password reset).

Screenshots of every step go to artifacts/browser/ under the repository (gitignored); the path
is printed at the start of the run. Nothing is skipped: without /usr/bin/chromium the test fails
and says how to install it."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from sqlalchemy import select

from core.__main__ import main as cli
from core.auth import permissions, sessions
from core.db import make_engine, session_scope
from core.models import Order
from core.settings import get_settings
from dashboard.auth import COOKIE_NAME
from tests.conftest import SECRET
from tests.support.apptest import PASSWORDS, write_users
from tests.support.dashboard_server import streamlit_dashboard
from tests.ui.test_pages import JENNY, TARO, Facts, build_shop

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "artifacts")) / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEP_TIMEOUT_MS = 30_000
ALL_PAGES = ("Overview", "Orders", "Payments", "Webhooks")
# Which of the four data pages each demo role sees in its navigation (DESIGN.md "Roles").
ROLE_PAGES = {
    "admin": {"Overview", "Orders", "Payments", "Webhooks"},
    "finance": {"Overview", "Orders", "Payments", "Webhooks"},
    "support": {"Orders"},
}
# A user of the login-cookie test whose password it resets (the demo users stay as they are).
RESET_USER, RESET_PASSWORD = "sam", "sam's long password 1"
# Jenny's declined attempt as the order timeline tells it.
DECLINED = "Payment of USD 25.00 declined: The card has insufficient funds (insufficient_funds)"


@dataclass(frozen=True)
class Dashboard:
    url: str
    facts: Facts
    log: Path
    database_url: str
    users_file: Path


@pytest.fixture(scope="module")
def dashboard(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """`streamlit run dashboard/app.py` on 127.0.0.1 and a free port, on a small shop built
    through the webhook path, with the demo users; stopped at the end of the module."""
    workdir = tmp_path_factory.mktemp("browser")
    database = workdir / "payments.db"
    shutil.copyfile(sqlite_template, database)
    engine = make_engine(f"sqlite:///{database}")
    facts = build_shop(engine)
    engine.dispose()
    users = write_users(workdir / "users.yaml", {RESET_USER: ("support", RESET_PASSWORD)})

    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "AUTH_CONFIG": str(users),
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    with streamlit_dashboard(workdir, env) as (url, log):
        yield Dashboard(url, facts, log, env["DATABASE_URL"], users)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser journey drives Debian's chromium. "
            "`make test` installs it (apt-get install chromium); never `playwright install`."
        )
    # Shared with the other journeys: each overwrites its own files, none deletes the others'.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {ARTIFACTS}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, url: str, role: str, password: str | None = None) -> None:
    """Log in through the form at `url` (the browser must hold no live login cookie)."""
    page.goto(url)
    page.get_by_role("textbox", name="Username").fill(role)
    page.get_by_role("textbox", name="Password").fill(password or PASSWORDS[role])
    page.get_by_role("button", name="Log in").click()
    # Logged in once the form is gone and the sidebar names the user.
    expect(page.get_by_role("button", name="Log in")).to_have_count(0)
    expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {role}")
    # Then a page's title: from "/", the switch to the landing page waits until the browser has
    # stored the login cookie, and a click before it could be overtaken by that switch.
    expect(page.get_by_role("heading", level=1).first).to_be_visible()
    # The browser stores the login cookie a moment after the form goes (a component's script):
    # leaving the page before that would be a new session without it.
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while not any(c["name"] == COOKIE_NAME for c in page.context.cookies()):
        assert time.monotonic() < deadline, "the login did not store its cookie"
        page.wait_for_timeout(50)


def nav_links(page: Page) -> set[str]:
    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink-NavLink")
    return {text.strip() for text in links.get_by_test_id("stMarkdownContainer").all_inner_texts()}


def open_page(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebar").get_by_role("link", name=title, exact=True).click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


@pytest.mark.parametrize("role", ["admin", "finance", "support"])
def test_a_day_at_the_console(dashboard: Dashboard, browser: Browser, role: str) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, dashboard.url, role)
        shot(page, f"{role}-1-landing")

        # The navigation lists the role's pages and none of the others.
        expect(page.get_by_test_id("stSidebar").get_by_test_id("stPageLink").first).to_be_visible()
        listed = nav_links(page) & set(ALL_PAGES)
        assert listed == ROLE_PAGES[role]

        # Search an order and open its timeline.
        open_page(page, "Orders")
        search = page.get_by_role("textbox", name="Search orders")
        search.fill(JENNY)
        search.press("Enter")
        expect(page.get_by_text(DECLINED)).to_be_visible()
        expect(page.get_by_text("Fulfilled automatically once the payment arrived")).to_be_visible()
        shown = JENNY if role != "finance" else "j***@example.com"
        expect(page.get_by_text(f"Customer email: {shown}").first).to_be_visible()
        if role == "finance":
            expect(page.get_by_text(JENNY)).to_have_count(0)
        shot(page, f"{role}-2-order-timeline")
        # The address names the order, so it can be pasted into a ticket; it survives a login.
        expect(page).to_have_url(re.compile(rf"/orders\?order={dashboard.facts.jenny_order_id}$"))
        link = page.url
        page.context.clear_cookies()
        log_in(page, link, role)
        expect(page.get_by_text(DECLINED)).to_be_visible()

        if "Payments" in ROLE_PAGES[role]:
            # A chart, drawn by plotly in the browser.
            open_page(page, "Payments")
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            shot(page, f"{role}-3-payments")
            # The CSV holds what the chart shows: one row per day with attempts (the week
            # before: 1; two days ago: 7), raw and per card.
            with page.expect_download() as download:
                page.get_by_role("button", name="Download rates (CSV)").click()
            saved = ARTIFACTS / f"{role}-payment-rates.csv"
            download.value.save_as(saved)
            rates = pd.read_csv(saved)
            assert list(rates["attempts"]) == [1, 7]
            assert list(rates["cards_failed"]) == [0, 1]
            open_page(page, "Overview")
            expect(page.get_by_test_id("stMetric").first).to_be_visible()
            shot(page, f"{role}-4-overview")
        else:
            # A page the role may not use, reached by its URL (the login cookie logs the new
            # browser session in): a refusal and none of its data.
            page.goto(f"{dashboard.url}/payments")
            expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {role}")
            expect(page.get_by_text("Your role does not give access to this page.")).to_be_visible()
            expect(page.get_by_role("heading", name="Payments", level=1)).to_have_count(0)
            expect(page.locator(".js-plotly-plot")).to_have_count(0)
            expect(page.get_by_test_id("stMetric")).to_have_count(0)
            expect(page.get_by_text("Download rates (CSV)")).to_have_count(0)
            shot(page, f"{role}-3-payments-url")
    except Exception:
        shot(page, f"{role}-failure")
        (ARTIFACTS / f"{role}-failure.html").write_text(page.content())
        print(f"streamlit log: {dashboard.log}")
        raise
    finally:
        context.close()


def shows_only_the_login_form(page: Page, facts: Facts) -> None:
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text("Signed in as")).to_have_count(0)
    # The one heading names the product (the login page); nothing of any page is drawn.
    expect(page.get_by_role("heading", level=1)).to_have_text(["Payments console"])
    expect(page.get_by_test_id("stMetric")).to_have_count(0)
    expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
    expect(page.get_by_text(facts.jenny["session"]["id"])).to_have_count(0)
    expect(page.get_by_text(DECLINED)).to_have_count(0)


@pytest.mark.parametrize(
    ("ending", "username"),
    [("logout", "admin"), ("revocation", "finance"), ("password reset", RESET_USER)],
)
def test_the_login_cookie_survives_a_reload_and_dies_with_its_session(
    dashboard: Dashboard,
    browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
    username: str,
) -> None:
    order_url = f"{dashboard.url}/orders?order={dashboard.facts.jenny_order_id}"
    name = f"cookie-{ending.replace(' ', '-')}"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    thief = browser.new_context(viewport={"width": 1400, "height": 1000})
    thief.set_default_timeout(STEP_TIMEOUT_MS)
    stolen = thief.new_page()
    try:
        log_in(page, order_url, username, RESET_PASSWORD if username == RESET_USER else None)
        expect(page.get_by_text(DECLINED)).to_be_visible()

        # A reload is a new Streamlit session: the cookie logs it in, no form.
        page.reload()
        expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {username}")
        expect(page.get_by_text(DECLINED)).to_be_visible()
        expect(page.get_by_role("button", name="Log in")).to_have_count(0)
        copied = context.cookies()
        assert any(c["name"] == COOKIE_NAME for c in copied)
        shot(page, f"{name}-1-after-reload")

        if ending == "logout":
            page.get_by_test_id("stSidebar").get_by_role("button", name="Log out").click()
            shows_only_the_login_form(page, dashboard.facts)
            # The library deleted this browser's cookie (the copy is dealt with below).
            deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
            while any(c["name"] == COOKIE_NAME for c in context.cookies()):
                assert time.monotonic() < deadline, "the logout left the cookie in the browser"
                time.sleep(0.1)
        else:
            monkeypatch.setenv("DATABASE_URL", dashboard.database_url)
            monkeypatch.setenv("AUTH_CONFIG", str(dashboard.users_file))
            get_settings.cache_clear()
            if ending == "revocation":
                engine = make_engine(dashboard.database_url)
                with session_scope(engine) as session:
                    admin = permissions.Actor("root", "admin")
                    ended = sessions.revoke_sessions(
                        session, username, by=admin, reason="revoked by an admin"
                    )
                engine.dispose()
                assert ended >= 1  # the day at the console left other sessions open
            else:
                monkeypatch.setattr("getpass.getpass", lambda prompt="": "a brand new password 7")
                assert cli(["users", "reset-password", username]) == 0
            # The open tab's next click shows the login form, without data.
            page.get_by_test_id("stSidebar").get_by_role("link", name="Orders").click()
            shows_only_the_login_form(page, dashboard.facts)
        shot(page, f"{name}-2-ended")

        # The cookie copied while the session lived, in a fresh browser: the login form only.
        thief.add_cookies(
            [{"name": c["name"], "value": c["value"], "url": dashboard.url} for c in copied]
        )
        stolen.goto(order_url)
        shows_only_the_login_form(stolen, dashboard.facts)
        stolen.reload()
        shows_only_the_login_form(stolen, dashboard.facts)
        shot(stolen, f"{name}-3-copied-cookie")
    except Exception:
        shot(page, f"{name}-failure")
        print(f"streamlit log: {dashboard.log}")
        raise
    finally:
        thief.close()
        context.close()


def _order_id(dashboard: Dashboard, checkout_session: str) -> int:
    engine = make_engine(dashboard.database_url)
    try:
        with session_scope(engine, write=False) as session:
            return int(
                session.execute(
                    select(Order.id).where(Order.checkout_session_id == checkout_session)
                ).scalar_one()
            )
    finally:
        engine.dispose()


def header_fact(page: Page, label: str) -> Locator:
    return page.get_by_test_id("stMetric").filter(
        has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    )


def test_support_finds_an_order_by_its_number_and_reads_the_facts(
    dashboard: Dashboard, browser: Browser
) -> None:
    """Issue 13 (findings 7 and 8): support's everyday task end to end. A customer quotes
    "#<order>", as the console prints it; support finds it, and reads from the header that it
    was paid, fulfilled and then refunded in full, when, and for how much, in UTC."""
    taro = _order_id(dashboard, dashboard.facts.taro["cs"])
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, dashboard.url, "support")
        search = page.get_by_role("textbox", name="Search orders")
        search.fill(f"#{taro}")
        search.press("Enter")
        expect(page.get_by_role("heading", name=f"Order #{taro}", level=2)).to_be_visible()
        expect(page).to_have_url(re.compile(rf"/orders\?order={taro}$"))
        expect(header_fact(page, "Status")).to_contain_text("Refunded")
        expect(header_fact(page, "Amount")).to_contain_text("JPY 5,000")
        expect(header_fact(page, "Refunded")).to_contain_text("JPY 5,000")
        day = f"{dashboard.facts.day:%Y-%m-%d}"
        expect(
            page.get_by_text(
                f"Paid at: {day} 10:00 UTC · Fulfilled at: {day} 10:00 UTC · "
                f"Refunded at: {day} 11:00 UTC"
            )
        ).to_be_visible()
        expect(page.get_by_text(f"Customer email: {TARO}").first).to_be_visible()
        # The timeline tells the same story in sentences, oldest first.
        expect(page.get_by_text("Payment of JPY 5,000 succeeded")).to_be_visible()
        expect(page.get_by_text("Refunded JPY 5,000 (in full)")).to_be_visible()
        shot(page, "support-order-by-number")
    except Exception:
        shot(page, "support-order-by-number-failure")
        print(f"streamlit log: {dashboard.log}")
        raise
    finally:
        context.close()


def test_an_unknown_page_says_not_found_and_leads_back(
    dashboard: Dashboard, browser: Browser
) -> None:
    """Finding 9: an unknown page silently landed on Overview."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, dashboard.url, "admin")
        page.goto(f"{dashboard.url}/no-such-page")
        expect(page.get_by_role("heading", name="Page not found", level=1)).to_be_visible()
        expect(page.get_by_text("There is no page called “no-such-page”")).to_be_visible()
        expect(page.get_by_role("heading", name="Overview", level=1)).to_have_count(0)
        shot(page, "unknown-page")
        # Streamlit's own notice says the same in a dialog, which closes with Escape; the page
        # under it stays (it used to switch to the landing page, leaving no trace).
        page.keyboard.press("Escape")
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.get_by_role("heading", name="Page not found", level=1)).to_be_visible()
        back = page.get_by_role("button", name="Back to the console")
        expect(back).to_be_visible()
        page.wait_for_timeout(1000)  # the dialog's closing animation moves the page under it
        back.click()
        expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    except Exception:
        shot(page, "unknown-page-failure")
        print(f"streamlit log: {dashboard.log}")
        raise
    finally:
        context.close()
