"""Issue 12 (part A), in a real browser: the hostile shop of tests/ui/test_hostile.py served by
`streamlit run`, every page an admin has opened in Debian's chromium, with every network request
intercepted: the journey fails if any request leaves the console's own address (an image in a
customer id, a link in a decline code, a note's picture). Findings 1-4 as a person meets them:
the crafted id reads as text, no link or image made of data is in the page, and the decline
reasons CSV comes down with its formulas neutralised."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from core.db import make_engine
from tests.conftest import SECRET
from tests.support.apptest import write_users
from tests.support.dashboard_server import streamlit_dashboard
from tests.support.stripe_standin import demo_standin
from tests.ui.test_browser import ARTIFACTS, STEP_TIMEOUT_MS, browser, log_in, open_page
from tests.ui.test_hostile import CUSTOMER, FORMULAS, build_hostile

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the chromium fixture of the other journey, shared

ADMIN_PAGES = (
    "Overview", "Orders", "Payments", "Webhooks", "Risk", "Promotion codes",
    "Manual fulfillment", "Reconcile & replay", "Audit log",
)  # fmt: skip


@dataclass(frozen=True)
class Served:
    url: str
    order_id: int


@pytest.fixture(scope="module")
def served(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("hostile-browser")
    database = workdir / "payments.db"
    shutil.copyfile(sqlite_template, database)
    engine = make_engine(f"sqlite:///{database}")
    order_id = build_hostile(engine)
    engine.dispose()
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "AUTH_CONFIG": str(write_users(workdir / "users.yaml")),
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    with demo_standin(env["DATABASE_URL"]) as api:
        env["STRIPE_API_BASE"] = api  # the dashboard's own server calls it, not the browser
        with streamlit_dashboard(workdir, env) as (url, _log):
            yield Served(url, order_id)


def no_data_markup(page: Page) -> None:
    for selector in ('img[src*="evil.example"]', 'a[href*="evil.example"]', "h1:has-text('===')"):
        expect(page.locator(selector)).to_have_count(0)


def test_hostile_data_never_makes_the_browser_leave_the_console(
    served: Served, browser: Browser
) -> None:
    """Every request the pages cause goes to the console's own address; none elsewhere."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    outside: list[str] = []

    def only_ours(route: Route, request: Request) -> None:
        if request.url.startswith((served.url, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    context.route("**/*", only_ours)
    context.on("request", lambda r: None if r.url.startswith(served.url) else outside.append(r.url))
    page = context.new_page()
    try:
        log_in(page, served.url, "admin")
        # Finding 1: the crafted customer id, on the order it belongs to.
        page.goto(f"{served.url}/orders?order={served.order_id}")
        expect(page.get_by_text(CUSTOMER, exact=False)).to_be_visible()
        no_data_markup(page)
        page.screenshot(path=str(ARTIFACTS / "hostile-order.png"), full_page=True)
        for title in ADMIN_PAGES:
            open_page(page, title)
            page.wait_for_timeout(500)  # charts and tables draw after the title
            no_data_markup(page)
            page.screenshot(path=str(ARTIFACTS / f"hostile-{title.split()[0]}.png"), full_page=True)
            if title == "Payments":  # finding 4, as downloaded
                with page.expect_download() as download:
                    page.get_by_role("button", name="Download decline reasons (CSV)").click()
                saved = ARTIFACTS / "hostile-decline-reasons.csv"
                download.value.save_as(saved)
                with saved.open(newline="") as handle:
                    codes = {row["decline_code"] for row in csv.DictReader(handle)}
                assert {"'" + formula for formula in FORMULAS} <= codes
                assert not codes & set(FORMULAS)
        # Finding 7 in the address bar: a message, not a stack trace.
        page.goto(f"{served.url}/orders?order=%C2%B2")
        expect(page.get_by_text("is not an order id")).to_be_visible()
        expect(page.get_by_test_id("stException")).to_have_count(0)
    finally:
        context.close()
    assert not outside, f"requests left the console: {outside}"
