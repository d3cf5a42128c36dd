"""The Stripe operations pages through the dashboard's entrypoint (AppTest), per role, against
the offline-demo stand-in serving Stripe-shaped answers derived from the test database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from streamlit.testing.v1 import AppTest

from core.console import jobs
from core.db import make_engine, session_scope
from core.models import AuditEntry, Fulfillment, Order, StripeEvent
from core.webhook import orders
from core.webhook.handlers import Context
from core.webhook.receive import apply_event
from dashboard.live import STANDIN_NOTICE
from demo.standin import StandIn, start_in_thread
from tests.support import stripe_objects as so
from tests.support.apptest import app_as, refused
from tests.support.stripe_standin import demo_standin

NOW = datetime.now(UTC)
REASON = "Fulfiller timed out after the payment; customer is waiting."


@pytest.fixture
def shop(sqlite_url: str) -> Iterator[Engine]:
    """One fulfilled order that used a code, one paid but unfulfilled order (id 2)."""
    engine = make_engine(sqlite_url)
    done = so.checkout_session(amount_total=3000, promotion_code="promo_SPRING")
    with session_scope(engine) as session:
        apply_event(session, so.event("checkout.session.completed", done), Context(), "webhook")
        with orders.locked_order(
            session,
            checkout_session_id="cs_test_waiting",
            payment_intent_id="pi_test_waiting",
            defaults={"created_at": NOW - timedelta(hours=1)},
        ) as order:
            order.amount_total, order.currency = 4500, "usd"
            order.customer_email = "wanda@example.com"
            orders.mark_paid(order, NOW - timedelta(minutes=50))
            orders.refresh_status(session, order, event_id=None, actor=None, at=NOW)
    yield engine
    engine.dispose()


@pytest.fixture
def standin(shop: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    stand = StandIn(shop)
    stand.seed()
    server, url = start_in_thread(stand)
    monkeypatch.setenv("STRIPE_API_BASE", url)
    yield stand
    server.shutdown()
    server.server_close()


def click(at: AppTest, label: str) -> AppTest:
    buttons = [b for b in at.button if b.label == label]
    assert buttons, f"no button {label!r}: {[b.label for b in at.button]}"
    buttons[0].click().run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    kinds = ("success", "error", "info", "warning")
    parts = [getattr(e, "value", "") for kind in kinds for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize(
    ("page", "allowed_roles"),
    [
        ("pages/promotions.py", {"support", "finance", "admin"}),
        ("pages/fulfillment.py", {"support", "admin"}),
        ("pages/operations.py", {"admin"}),
    ],
)
@pytest.mark.parametrize("role", ["support", "finance", "admin"])
def test_pages_per_role(
    sqlite_url: str, standin: StandIn, page: str, allowed_roles: set[str], role: str
) -> None:
    at = app_as(role, sqlite_url, page=page)
    assert not at.exception, at.exception
    if role in allowed_roles:
        assert not refused(at)
        assert STANDIN_NOTICE in texts(at)  # the stand-in is plainly labelled
    else:
        assert refused(at)
        assert STANDIN_NOTICE not in texts(at)
        assert not at.dataframe


def field(at: AppTest, label: str) -> Any:
    """The widget labelled `label` (the create form's keys change with each generation)."""
    for kind in ("text_input", "selectbox", "checkbox"):
        found = [w for w in at.get(kind) if getattr(w, "label", None) == label]
        if found:
            return found[0]
    raise AssertionError(f"no field {label!r}")


def shown(at: AppTest) -> str:
    """The messages as a person reads them (markdown escapes removed)."""
    return texts(at).replace("\\", "")


def button(at: AppTest, label: str) -> Any:
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}: {[b.label for b in at.button]}"
    return found[0]


def test_promotions_page_lists_codes_and_only_admins_manage(
    sqlite_url: str, standin: StandIn
) -> None:
    support = app_as("support", sqlite_url, page="pages/promotions.py")
    table = support.dataframe[0].value
    assert list(table["code"]) == ["SPRING"] and list(table["redeemed"]) == ["1"]
    usage = support.dataframe[1].value
    assert list(usage["code"]) == ["SPRING"] and list(usage["paid orders"]) == [1]
    assert not [b for b in support.button if b.label == "Create promotion code"]

    admin = app_as("admin", sqlite_url, page="pages/promotions.py")
    field(admin, "Code (letters, digits, dashes, underscores)").input("NEW YEAR")
    field(admin, "Percent off (1 to 100)").input("15").run()
    assert "only letters, digits, dashes and underscores" in shown(admin)
    assert button(admin, "Create promotion code").disabled  # refused before submission

    field(admin, "Code (letters, digits, dashes, underscores)").input("NEWYEAR").run()
    click(admin, "Create promotion code")
    (created,) = [c for c in standin.codes.values() if c["code"] == "NEWYEAR"]
    assert created["active"]
    assert f"Created promotion code NEWYEAR ({created['id']}): NEWYEAR: 15% off (once)." in (
        shown(admin)
    )

    admin = app_as("admin", sqlite_url, page="pages/promotions.py")
    admin.selectbox(key="pc_pick").select(created["id"]).run()
    click(admin, f"Deactivate NEWYEAR ({created['id']})...")
    assert created["active"] is True  # asked first
    click(admin, "Yes, deactivate NEWYEAR")
    assert created["active"] is False
    with session_scope(make_engine(sqlite_url), write=False) as session:
        actions = session.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars()
        assert [a for a in actions if a.startswith(("coupon", "promotion"))] == [
            "coupon.create",
            "promotion_code.create",
            "promotion_code.deactivate",
        ]


def test_absurd_stripe_values_render_and_the_code_can_be_deactivated(
    sqlite_url: str, standin: StandIn
) -> None:
    """Finding 1 (issue 13): a code with redemption limit 99999999999999999999 crashed the
    Promotion codes page for every role (OverflowError building the table) and could not be
    deactivated. Any limit, count, amount or timestamp Stripe returns now renders."""
    (spring,) = standin.codes.values()
    spring.update(
        max_redemptions=99999999999999999999,
        times_redeemed=10**30,
        expires_at=10**15,
        created=-5,
    )
    coupon = standin.coupons[spring["promotion"]["coupon"]]
    coupon.update(percent_off=None, amount_off=10**25, currency="usd")
    for role in ("support", "finance", "admin"):
        at = app_as(role, sqlite_url, page="pages/promotions.py")
        assert not at.exception, at.exception
        table = at.dataframe[0].value
        assert list(table["limit"]) == ["99,999,999,999,999,999,999"]
        assert list(table["terms"]) == ["USD 100,000,000,000,000,000,000,000.00 off (once)"]
    click(at, f"Deactivate SPRING ({spring['id']})...")
    click(at, "Yes, deactivate SPRING")
    assert spring["active"] is False
    assert f"Deactivated promotion code SPRING ({spring['id']})." in shown(at)


@pytest.mark.parametrize(
    ("label", "typed", "problem"),
    [
        ("Expires on (optional, UTC, YYYY-MM-DD)", "2099-01-01", "within 5 years"),
        ("Redemption limit (optional)", "99999999999999999999", "at most 2,147,483,647"),
        ("or amount off, e.g. 5.00", "99999999999999.00", "Stripe's limit"),
        ("Minimum order amount (optional)", "1e9", "written as digits"),
    ],
)
def test_out_of_range_fields_disable_create(
    sqlite_url: str, standin: StandIn, label: str, typed: str, problem: str
) -> None:
    """Findings 3 and 4 (issue 13): an expiry in 2099 showed a red error yet Create stored the
    code (with no expiry, or today's); amount_off 99,999,999,999,999.00 and a minimum of 1e9
    were accepted. Each field is refused as it is typed and Create stays disabled."""
    admin = app_as("admin", sqlite_url, page="pages/promotions.py")
    field(admin, "Code (letters, digits, dashes, underscores)").input("FAR")
    field(admin, "Percent off (1 to 100)").input("" if "amount" in label else "10")
    field(admin, label).input(typed).run()
    assert problem in shown(admin)
    assert button(admin, "Create promotion code").disabled
    assert [c["code"] for c in standin.codes.values()] == ["SPRING"]


def test_the_form_is_empty_after_a_success_and_the_picker_stays_on_its_code(
    sqlite_url: str, standin: StandIn
) -> None:
    """Findings 4 and 6 (issue 13): a form reused after a create kept its values (an expiry of
    today); after a deactivation the picker jumped to the next code, whose button then read
    "Deactivate AUTUMN" with no confirmation."""
    admin = app_as("admin", sqlite_url, page="pages/promotions.py")
    field(admin, "Code (letters, digits, dashes, underscores)").input("AUTUMN")
    field(admin, "Percent off (1 to 100)").input("10")
    field(admin, "Expires on (optional, UTC, YYYY-MM-DD)").input(
        (NOW + timedelta(days=3)).strftime("%Y-%m-%d")
    ).run()
    click(admin, "Create promotion code")
    for label in (
        "Code (letters, digits, dashes, underscores)",
        "Percent off (1 to 100)",
        "Expires on (optional, UTC, YYYY-MM-DD)",
    ):
        assert field(admin, label).value == "", label
    assert button(admin, "Create promotion code").disabled

    (spring,) = [c for c in standin.codes.values() if c["code"] == "SPRING"]
    admin.selectbox(key="pc_pick").select(spring["id"]).run()
    click(admin, f"Deactivate SPRING ({spring['id']})...")
    assert "Customers can no longer redeem it" in shown(admin)
    click(admin, "Yes, deactivate SPRING")
    assert spring["active"] is False
    assert admin.selectbox(key="pc_pick").value == spring["id"]
    assert button(admin, f"Reactivate SPRING ({spring['id']})...")
    assert not [b for b in admin.button if b.label.startswith("Deactivate AUTUMN")]


def test_support_requests_and_admin_approves(sqlite_url: str, standin: StandIn) -> None:
    support = app_as("support", sqlite_url, page="pages/fulfillment.py")
    awaiting = support.dataframe[0].value
    assert list(awaiting["order"]) == [2]
    assert list(awaiting["email"]) == ["wanda@example.com"]
    support.number_input(key="mf_order").set_value(2)
    support.text_area(key="mf_reason").input(REASON)
    support.text_input(key="mf_confirm").input("2")
    click(support, "Request fulfillment")
    assert "an admin must approve it" in texts(support)
    assert not [b for b in support.button if b.label == "Approve and fulfil"]

    admin = app_as("admin", sqlite_url, page="pages/fulfillment.py")
    admin.text_input(key="mf_approve_confirm_1").input("2")
    click(admin, "Approve and fulfil")
    assert "Order 2 fulfilled" in texts(admin)
    with session_scope(make_engine(sqlite_url), write=False) as session:
        fulfilled = session.execute(
            select(Fulfillment.source, Fulfillment.actor).where(Fulfillment.order_id == 2)
        ).one()
        assert tuple(fulfilled) == ("manual", "admin")
        order = session.get(Order, 2)
        assert order is not None and order.status == "fulfilled"


def test_the_request_form_is_empty_after_a_success(sqlite_url: str, standin: StandIn) -> None:
    """Finding 6 (issue 13): forms kept their values after success, ready to be sent again."""
    support = app_as("support", sqlite_url, page="pages/fulfillment.py")
    support.number_input(key="mf_order").set_value(2)
    support.text_area(key="mf_reason").input(REASON)
    support.text_input(key="mf_confirm").input("2")
    click(support, "Request fulfillment")
    assert "Requested manual fulfillment of order 2 (#1)" in texts(support)
    assert support.number_input(key="mf_order_1").value is None
    assert support.text_area(key="mf_reason_1").value == ""
    assert support.text_input(key="mf_confirm_1").value == ""


def test_admin_fulfils_directly_and_a_second_try_is_told(sqlite_url: str, standin: StandIn) -> None:
    admin = app_as("admin", sqlite_url, page="pages/fulfillment.py")
    for suffix in ("", "_1"):  # the form is a new, empty one after the first success
        admin.number_input(key=f"mf_d_order{suffix}").set_value(2)
        admin.text_area(key=f"mf_d_reason{suffix}").input(REASON)
        admin.text_input(key=f"mf_d_confirm{suffix}").input("2")
        click(admin, "Fulfil now")
    assert "Order 2 is already fulfilled." in texts(admin)
    with session_scope(make_engine(sqlite_url), write=False) as session:
        assert session.execute(select(func.count()).select_from(Fulfillment)).scalar_one() == 2


def wait_for_reconciliation(sqlite_url: str, timeout: float = 30) -> None:
    engine = make_engine(sqlite_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = jobs.state(engine, "reconcile")
            if state is not None and not state.running:
                return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("the reconciliation did not finish")


def reconcile_audits(sqlite_url: str) -> int:
    with session_scope(make_engine(sqlite_url), write=False) as session:
        return session.execute(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "events.reconcile")
        ).scalar_one()


def test_a_double_clicked_reconciliation_runs_once(sqlite_url: str, standin: StandIn) -> None:
    """Finding 5 (issue 13): a second click on "Run reconciliation" started a second full
    run beside the first (two audit entries). The second click of the same button now does
    nothing, the button is disabled while the job runs, and the report names who ran it."""
    admin = app_as("admin", sqlite_url, page="pages/operations.py")
    run = next(b for b in admin.button if str(b.label).startswith("Run reconciliation"))
    run.click().run()
    assert not admin.exception, admin.exception
    run.click().run()  # the same button clicked again: a double click
    assert not admin.exception, admin.exception
    wait_for_reconciliation(sqlite_url)
    admin.run()
    assert reconcile_audits(sqlite_url) == 1
    assert "nothing to do" in admin.code[0].value
    assert any(
        c.value.startswith("Last reconciliation finished: started by admin at")
        for c in admin.caption
    )


def test_a_running_reconciliation_disables_the_button_everywhere(
    sqlite_url: str, standin: StandIn
) -> None:
    engine = make_engine(sqlite_url)
    claimed, _ = jobs.claim(engine, "reconcile", "cron", "other-process")
    jobs.progress(engine, "reconcile", "other-process", "applying missing events", 2, 8)
    engine.dispose()
    assert claimed == "started"
    admin = app_as("admin", sqlite_url, page="pages/operations.py")
    run = next(b for b in admin.button if str(b.label).startswith("Run reconciliation"))
    assert run.disabled
    assert admin.status[0].label == "Reconciliation running: applying missing events"
    assert reconcile_audits(sqlite_url) == 0


def test_operations_reconcile_and_replay(sqlite_url: str, standin: StandIn) -> None:
    admin = app_as("admin", sqlite_url, page="pages/operations.py")
    click(admin, "Run reconciliation (last 30 days)")
    wait_for_reconciliation(sqlite_url)
    admin.run()
    report = admin.code[0].value
    assert "nothing to do" in report  # the stand-in's events are ours: nothing is missing

    with session_scope(make_engine(sqlite_url), write=False) as session:
        event_id = session.execute(select(StripeEvent.id)).scalar_one()
    admin.text_input(key="ops_event").input(event_id).run()
    assert next(b for b in admin.button if b.label == "Replay for real").disabled
    click(admin, "Dry run")
    assert "would change nothing: it was already applied" in texts(admin)
    click(admin, "Replay for real")  # asks first, naming the event: nothing applied yet
    assert "changed nothing" not in texts(admin)
    confirm = next(b for b in admin.button if str(b.label).startswith("Yes, replay"))
    assert event_id in str(confirm.label)  # the button names the event
    confirm.click().run()
    assert "changed nothing" in texts(admin)


def test_endpoint_health_on_the_webhooks_page(
    shop: Engine, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with demo_standin(sqlite_url) as url:
        monkeypatch.setenv("STRIPE_API_BASE", url)
        finance = app_as("finance", sqlite_url, page="pages/webhooks.py")
    assert not finance.exception
    assert "Webhook endpoint health" in [h.value for h in finance.subheader]
    assert "sends every event we handle" in texts(finance)


def test_without_stripe_configured_pages_say_so(shop: Engine, sqlite_url: str) -> None:
    """No key and no stand-in: the Stripe pages say what to configure; Webhooks still works."""
    promotions = app_as("admin", sqlite_url, page="pages/promotions.py")
    assert not promotions.exception
    assert "Stripe is not configured: set STRIPE_SECRET_KEY" in texts(promotions)
    assert not promotions.dataframe
    webhooks = app_as("finance", sqlite_url, page="pages/webhooks.py")
    assert not webhooks.exception
    assert "Stripe's view of the endpoints is unavailable" in texts(webhooks)


def test_unreachable_standin_is_a_message_not_a_trace(
    shop: Engine, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:9")  # nothing listens there
    at = app_as("admin", sqlite_url, page="pages/operations.py")
    click(at, "Run reconciliation (last 30 days)")
    wait_for_reconciliation(sqlite_url)
    at.run()
    assert not at.exception
    assert at.code[0].value.startswith("failed: Stripe could not be reached")
    assert any(c.value.startswith("Last reconciliation FAILED") for c in at.caption)
    assert reconcile_audits(sqlite_url) == 0


def test_an_admin_cannot_approve_their_own_request_on_the_page(
    sqlite_url: str, standin: StandIn
) -> None:
    admin = app_as("admin", sqlite_url, page="pages/fulfillment.py")
    admin.number_input(key="mf_order").set_value(2)
    admin.text_area(key="mf_reason").input(REASON)
    admin.text_input(key="mf_confirm").input("2")
    click(admin, "Request fulfillment")
    assert "an admin must approve it" in texts(admin)
    admin.run()
    assert "Your own request: another admin must approve it." in [c.value for c in admin.caption]
    assert not [b for b in admin.button if b.label == "Approve and fulfil"]
