"""The browser journey of the Stripe operations pages: `streamlit run` over a shop built through
the real webhook path, talking to the offline Stripe stand-in (no STRIPE_SECRET_KEY), driven by
Debian's chromium through Playwright.

Support requests the manual fulfillment of an order whose fulfiller deferred (paid, not
fulfilled) and logs out; an admin creates a promotion code, sees it listed, deactivates it,
then approves the support user's request, and the order's timeline shows it fulfilled by hand.
Screenshots (ops-*.png) go to the same artifacts directory as the other journeys."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.users import User, hash_password, load_users, save_users
from core.db import make_engine, session_scope
from core.models import AuditEntry, Fulfillment, FulfillmentRequest, Order, UserSession
from core.webhook.fulfillment import FulfillmentDeferred
from core.webhook.handlers import Context
from core.webhook.receive import receive
from demo.standin import StandIn, start_in_thread
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.apptest import write_users
from tests.support.dashboard_server import streamlit_dashboard
from tests.ui.test_browser import (
    ARTIFACTS,
    STEP_TIMEOUT_MS,
    browser,
    log_in,
    open_page,
    shot,
)

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module-scoped chromium fixture

WAITING_EMAIL = "wanda@example.com"
WAITING_AMOUNT = 4500
REASON = "Warehouse API timed out after the payment; the customer is waiting for the parcel."


@dataclass(frozen=True)
class OpsDashboard:
    url: str
    db_url: str
    waiting_order: int
    log: Path


def _deliver(engine: Engine, evt: dict[str, Any], ctx: Context) -> None:
    body, header = so.signed(evt, SECRET)
    outcome = receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx)
    assert outcome.status == 200, outcome


def _defer(session: Session, order: Order) -> None:
    raise FulfillmentDeferred("warehouse system unavailable")


def build_shop(db_url: str) -> int:
    """Two orders through the signed webhook path: one fulfilled that used a promotion code
    (the stand-in seeds that code), one paid whose fulfiller deferred. Returns the latter's id."""
    engine = make_engine(db_url)
    try:
        done = so.checkout_session(
            amount_total=3000, email="jenny.rosen@example.com", promotion_code="promo_SPRING"
        )
        _deliver(engine, so.event("checkout.session.completed", done), Context())
        waiting = so.checkout_session(amount_total=WAITING_AMOUNT, email=WAITING_EMAIL)
        _deliver(engine, so.event("checkout.session.completed", waiting), Context(fulfiller=_defer))
        with session_scope(engine, write=False) as session:
            order = session.execute(
                select(Order).where(Order.checkout_session_id == waiting["id"])
            ).scalar_one()
            assert (order.status, order.fulfilled_at) == ("paid", None)
            return order.id
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def ops_dashboard(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpsDashboard]:
    """The stand-in over the shop's database and `streamlit run` pointed at it through
    STRIPE_API_BASE, both on 127.0.0.1, both stopped at the end of the module."""
    workdir = tmp_path_factory.mktemp("ops-browser")
    database = workdir / "payments.db"
    shutil.copyfile(sqlite_template, database)
    db_url = f"sqlite:///{database}"
    waiting_order = build_shop(db_url)
    with absurd_standin(db_url) as stripe_base:
        env = {
            "DATABASE_URL": db_url,
            "AUTH_CONFIG": str(with_real_cost_user(write_users(workdir / "users.yaml"))),
            "STRIPE_WEBHOOK_SECRETS": SECRET,
            "STRIPE_API_BASE": stripe_base,  # no STRIPE_SECRET_KEY: the offline stand-in
        }
        with streamlit_dashboard(workdir, env) as (url, log):
            yield OpsDashboard(url, db_url, waiting_order, log)


REAL_COST_USER, REAL_COST_PASSWORD = "careful", "a-long-enough-password-2026"


def with_real_cost_user(path: Path) -> Path:
    """Add a finance user hashed at the production bcrypt cost: a login then takes long enough
    (a quarter of a second) for a double click to land while the first is still running."""
    users = load_users(path)
    users[REAL_COST_USER] = User(
        REAL_COST_USER, REAL_COST_USER, "finance", hash_password(REAL_COST_PASSWORD)
    )
    save_users(path, users)
    return path


@contextmanager
def absurd_standin(db_url: str) -> Iterator[str]:
    """The offline-demo stand-in, plus one code with values no form would accept but Stripe
    may return (finding 1: a 20-digit limit crashed the page for every role)."""
    engine = make_engine(db_url)
    stand = StandIn(engine)
    stand.seed()
    (spring,) = stand.codes.values()
    coupon = dict(stand.coupons[spring["promotion"]["coupon"]], id="huge", percent_off=None)
    coupon.update(amount_off=10**25, currency="usd")
    stand.coupons["huge"] = coupon
    stand.codes["promo_absurd"] = {
        **spring,
        "id": "promo_absurd",
        "code": "ABSURD",
        "max_redemptions": 99999999999999999999,
        "times_redeemed": 10**22,
        "expires_at": 10**15,
        "promotion": {"type": "coupon", "coupon": "huge"},
    }
    server, url = start_in_thread(stand)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()


def log_out(page: Page) -> None:
    page.get_by_test_id("stSidebar").get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text("Signed in as")).to_have_count(0)


def go(page: Page, title: str) -> None:
    """Open a page from the sidebar. A click landing while the landing page's own run (the
    switch after login) is still going can be overtaken by it, so a few bounded attempts."""
    heading = page.get_by_role("heading", name=title, level=1)
    for _ in range(3):
        page.get_by_test_id("stSidebar").get_by_role("link", name=title).click()
        try:
            expect(heading).to_be_visible(timeout=10_000)
        except AssertionError:
            continue
        expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
        return
    open_page(page, title)  # the last attempt, with the full step timeout and its message


def settled(container: Locator) -> None:
    """Wait until the current run has redrawn `container` (an element container, by its key
    class) and the run has ended: a widget redrawn while its list is open closes the list."""
    expect(container).to_have_attribute("data-stale", "false")
    expect(container.page.get_by_test_id("stStatusWidget")).to_have_count(0)


def choose(main: Locator, key: str, option: str) -> None:
    """Pick `option` in the selectbox with widget key `key`.

    The viewport is tall enough for the list to open without scrolling (react-aria closes it
    when the page scrolls). A run that was still redrawing the page can close the list under
    the click, so a few bounded attempts are made, each with its own short wait."""
    container = main.locator(f".st-key-{key}")
    combo = container.get_by_role("combobox")
    listbox = main.page.get_by_role("listbox")
    for _ in range(5):
        settled(container)
        container.get_by_role("button", name="Open").click()
        try:
            listbox.get_by_role("option", name=option, exact=True).click(timeout=3_000)
            expect(combo).to_have_value(option, timeout=3_000)
            return
        except (AssertionError, PlaywrightTimeoutError):
            main.page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in the selectbox {key!r}")


def test_admin_manages_a_code_and_approves_a_support_request(
    ops_dashboard: OpsDashboard, browser: Browser
) -> None:
    order_id = ops_dashboard.waiting_order
    code = f"BROWSER15-{uuid.uuid4().hex[:6].upper()}"
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    main = page.get_by_test_id("stMain")
    try:
        # Support: request the manual fulfillment of the order left paid but not fulfilled.
        log_in(page, ops_dashboard.url, "support")
        go(page, "Manual fulfillment")
        expect(main.get_by_text("Stripe stand-in: this console is talking")).to_be_visible()
        expect(main.get_by_role("button", name="Approve and fulfil")).to_have_count(0)
        main.get_by_label("Order id", exact=True).fill(str(order_id))
        main.get_by_label("Reason (what failed, who asked)").fill(REASON)
        main.get_by_label("Type the order id again to confirm").fill(str(order_id))
        shot(page, "ops-1-support-request-form")
        main.get_by_role("button", name="Request fulfillment").click()
        expect(
            main.get_by_text(
                re.compile(rf"Requested manual fulfillment of order {order_id} \(#\d+\)")
            )
        ).to_be_visible()
        expect(main.get_by_text("an admin must approve it", exact=False)).to_be_visible()
        shot(page, "ops-2-support-requested")
        log_out(page)

        # Admin: the code with absurd Stripe-side values renders; create a code with a new 15%
        # coupon, see it listed, deactivate it after confirming; the picker stays on it.
        log_in(page, ops_dashboard.url, "admin")
        go(page, "Promotion codes")
        expect(main.get_by_text("2 codes, 2 active.")).to_be_visible()
        expect(main.get_by_text("This app has encountered an error")).to_have_count(0)
        create = main.get_by_role("button", name="Create promotion code")
        expect(create).to_be_disabled()
        main.get_by_label("Code (letters, digits, dashes, underscores)").fill(code)
        main.get_by_label("Code (letters, digits, dashes, underscores)").press("Tab")
        main.get_by_label("Percent off (1 to 100)").fill("15")
        main.get_by_label("Percent off (1 to 100)").press("Tab")
        expiry = main.get_by_label("Expires on (optional, UTC, YYYY-MM-DD)")
        expiry.fill("2099-01-01")
        expiry.press("Tab")
        expect(main.get_by_text("The expiry must be within 5 years")).to_be_visible()
        expect(create).to_be_disabled()  # finding 4: refused before submission is possible
        expiry.fill("")
        expiry.press("Tab")
        expect(create).to_be_enabled()
        shot(page, "ops-3-admin-create-form")
        create.dblclick()  # a double click creates one code
        created = main.get_by_text(re.compile(rf"Created promotion code {code} \(promo_"))
        expect(created).to_be_visible()
        code_id = re.search(r"\((promo_[A-Za-z0-9_]+)\)", created.inner_text())
        assert code_id is not None
        shot(page, "ops-4-admin-created")
        expect(main.get_by_text("3 codes, 3 active.")).to_be_visible()
        expect(main.get_by_label("Code (letters, digits, dashes, underscores)")).to_have_value("")
        choose(main, "pc_pick", f"{code} (active) · {code_id[1]}")
        shot(page, "ops-5-admin-code-listed")
        main.get_by_role("button", name=f"Deactivate {code} ({code_id[1]})...").click()
        main.get_by_role("button", name=f"Yes, deactivate {code}").dblclick()
        expect(main.get_by_text("3 codes, 2 active.")).to_be_visible()
        expect(
            main.get_by_role("button", name=f"Reactivate {code} ({code_id[1]})...")
        ).to_be_visible()
        shot(page, "ops-6-admin-code-inactive")

        # Admin: a double-clicked reconciliation runs once.
        go(page, "Reconcile & replay")
        main.get_by_role("button", name="Run reconciliation (last 30 days)").dblclick()
        expect(main.get_by_text("Last reconciliation finished: started by admin")).to_be_visible()
        shot(page, "ops-6b-admin-reconciled")

        # Admin: approve the support user's request; Stripe (the stand-in) confirms the payment.
        go(page, "Manual fulfillment")
        expect(main.get_by_text("requested by")).to_contain_text("support")
        main.get_by_label(f"Type order id {order_id} to approve").fill(str(order_id))
        main.get_by_label(f"Type order id {order_id} to approve").press("Enter")
        shot(page, "ops-7-admin-approval")
        main.get_by_role("button", name="Approve and fulfil").click()
        expect(
            main.get_by_text(f"Order {order_id} fulfilled (Stripe confirmed the payment).")
        ).to_be_visible()
        shot(page, "ops-8-admin-approved")

        # The order's timeline: fulfilled by hand, after the request and its approval.
        go(page, "Orders")
        search = main.get_by_role("textbox", name="Search orders")
        search.fill(str(order_id))
        search.press("Enter")
        expect(main.get_by_text("Fulfilled by hand by admin").first).to_be_visible()
        expect(main.get_by_text("support asked for a manual fulfillment").first).to_be_visible()
        expect(main.get_by_text("admin approved manual fulfillment request").first).to_be_visible()
        shot(page, "ops-9-order-timeline")
    except Exception:
        shot(page, "ops-failure")
        (ARTIFACTS / "ops-failure.html").write_text(page.content())
        print(f"streamlit log: {ops_dashboard.log}")
        raise
    finally:
        context.close()

    engine = make_engine(ops_dashboard.db_url)
    try:
        with session_scope(engine, write=False) as session:
            fulfillments = session.execute(
                select(Fulfillment.order_id, Fulfillment.source, Fulfillment.actor)
            ).all()
            status = session.execute(select(Order.status).where(Order.id == order_id)).scalar_one()
            request = session.execute(
                select(
                    FulfillmentRequest.id,
                    FulfillmentRequest.order_id,
                    FulfillmentRequest.requested_by,
                    FulfillmentRequest.decided_by,
                    FulfillmentRequest.status,
                )
            ).one()
            entries = session.execute(
                select(AuditEntry.action, AuditEntry.actor, AuditEntry.target, AuditEntry.details)
                .where(
                    or_(
                        *(
                            AuditEntry.action.startswith(prefix)
                            for prefix in (
                                "fulfillment.",
                                "coupon.",
                                "promotion_code.",
                                "events.reconcile",
                            )
                        )
                    )
                )
                .order_by(AuditEntry.id)
            ).all()
            manual = session.execute(
                select(AuditEntry.stripe_request_id).where(
                    AuditEntry.action == "fulfillment.manual"
                )
            ).scalar_one()
            chain = audit.verify(session)
    finally:
        engine.dispose()
    # The webhook fulfilled the other order; this one exactly once, by hand, by the admin.
    assert sorted(f for f in fulfillments if f.order_id == order_id) == [
        (order_id, "manual", "admin")
    ]
    assert len(fulfillments) == 2
    assert status == "fulfilled"
    assert (request.order_id, request.requested_by, request.decided_by, request.status) == (
        order_id,
        "support",
        "admin",
        "done",
    )
    assert [(e.action, e.actor) for e in entries] == [
        ("fulfillment.requested", "support"),
        ("coupon.create", "admin"),
        ("promotion_code.create", "admin"),
        ("promotion_code.deactivate", "admin"),
        ("events.reconcile", "admin"),
        ("fulfillment.manual", "admin"),
    ]
    assert entries[0].target == entries[-1].target == f"order:{order_id}"
    assert entries[-1].details["request_id"] == request.id
    assert manual is not None and manual.startswith("req_standin_")
    assert chain.ok, chain.describe()


def test_a_double_clicked_log_in_opens_one_session(
    ops_dashboard: OpsDashboard, browser: Browser
) -> None:
    """Finding 5 (issue 13): double-clicking "Log in" opened two sessions."""
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(ops_dashboard.url)
        page.get_by_role("textbox", name="Username").fill(REAL_COST_USER)
        page.get_by_role("textbox", name="Password").fill(REAL_COST_PASSWORD)
        page.get_by_role("button", name="Log in").dblclick()
        expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {REAL_COST_USER}")
        expect(page.get_by_role("heading", level=1).first).to_be_visible()
        page.wait_for_timeout(1_000)  # a second run, if any, has had its time
    finally:
        context.close()
    engine = make_engine(ops_dashboard.db_url)
    try:
        with session_scope(engine, write=False) as session:
            opened = session.execute(
                select(func.count())
                .select_from(UserSession)
                .where(UserSession.username == REAL_COST_USER)
            ).scalar_one()
    finally:
        engine.dispose()
    assert opened == 1
