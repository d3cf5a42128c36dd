"""Personal data (issue 12 part B): a masked email cannot be recovered by a role that sees it
masked (finding 5), and erasure pseudonymises a person everywhere but keeps amounts, states,
ids and the audit chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Engine, String, Text, func, select
from sqlalchemy.orm import Session

from core.__main__ import main as cli
from core.auth import anchor, audit
from core.auth.permissions import Actor, PermissionDenied
from core.console import erasure, orders
from core.db import session_scope
from core.models import (
    Alert,
    AuditEntry,
    Base,
    FulfillmentRequest,
    Order,
    PaymentAttempt,
    PaymentAttemptHourly,
    RiskFlag,
)
from core.webhook.handlers import Context
from core.webhook.receive import receive
from dashboard import data
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.apptest import reset_caches

JENNY = "jenny.rosen@example.com"
JENNY_NAME = "Jenny Rosen"
JENNY_IP = "203.0.113.50"
ALEX = "alex.other@example.org"
ALEX_IP = "198.51.100.23"
ADMIN = Actor("root", "admin")
FINANCE = Actor("fiona", "finance")
SUPPORT = Actor("sam", "support")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def closed_engines() -> Iterator[None]:
    yield
    reset_caches()


def deliver(engine: Engine, evt: dict[str, Any]) -> None:
    body, header = so.signed(evt, SECRET)
    receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=Context())


def buy(engine: Engine, email: str, name: str, ip: str, customer: str, amount: int) -> None:
    """A customer's paid Checkout Session, one declined and one successful charge."""
    pi = so.unique("pi")
    session = so.checkout_session(
        email=email, customer=customer, amount_total=amount, payment_intent=pi
    )
    session["customer_details"]["name"] = name
    deliver(engine, so.event("checkout.session.completed", session))
    failed = so.charge(
        payment_intent=pi,
        succeeded=False,
        amount=amount,
        client_ip=ip,
        email=email,
        fingerprint=f"fp_{customer}",
    )
    failed["billing_details"]["name"] = name
    deliver(engine, so.event("charge.failed", failed))
    paid = so.charge(
        payment_intent=pi, amount=amount, client_ip=ip, email=email, fingerprint=f"fp_{customer}"
    )
    paid["billing_details"]["name"] = name  # the example's own name is Jenny's
    deliver(engine, so.event("charge.succeeded", paid))


@pytest.fixture
def shop(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("AUDIT_CHECKPOINT_PATH", str(Path.cwd() / "checkpoints.jsonl"))
    reset_caches()
    from core.db import get_engine

    engine = get_engine(db_url)
    buy(engine, JENNY, JENNY_NAME, JENNY_IP, "cus_jenny", 2500)
    buy(engine, JENNY.upper(), JENNY_NAME, JENNY_IP, "cus_jenny", 1200)
    buy(engine, ALEX, "Alex Other", ALEX_IP, "cus_alex", 4000)
    with session_scope(engine) as session:
        order_id = session.execute(
            select(Order.id).where(Order.customer_email == JENNY)
        ).scalar_one()
        session.add_all(
            [
                RiskFlag(
                    entity_kind="email",
                    entity_value=JENNY,
                    window_start=T0,
                    window_end=T0,
                    failures=4,
                    note=f"same as {JENNY_NAME}?",
                ),
                RiskFlag(
                    entity_kind="ip",
                    entity_value=JENNY_IP,
                    window_start=T0,
                    window_end=T0,
                    failures=4,
                ),
                RiskFlag(
                    entity_kind="ip",
                    entity_value=ALEX_IP,
                    window_start=T0,
                    window_end=T0,
                    failures=5,
                ),
                Alert(condition="risk_flag", window_start=T0, message=f"New flag: email {JENNY}"),
                FulfillmentRequest(
                    order_id=order_id,
                    requested_by="sam",
                    reason=f"{JENNY_NAME} ({JENNY}) wrote from {JENNY_IP}",
                ),
            ]
        )
        audit.record(
            session,
            SUPPORT,
            "fulfillment.requested",
            f"order:{order_id}",
            {"reason": f"{JENNY} called from {JENNY_IP}"},
        )
    yield engine


def every_text(session: Session) -> Iterator[tuple[str, str]]:
    """(table.column, text) for every text and JSON value of every table."""
    for table in Base.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
        for row in session.execute(select(*columns)).all():
            for column, value in zip(columns, row, strict=True):
                if value is not None:
                    text = value if isinstance(value, str) else json.dumps(value)
                    yield f"{table.name}.{column.name}", text


def mentions(session: Session, *needles: str) -> set[str]:
    found = set()
    for where, text in every_text(session):
        lowered = text.lower()
        if any(n.lower() in lowered or json.dumps(n)[1:-1].lower() in lowered for n in needles):
            found.add(where)
    return found


def figures(session: Session) -> dict[str, Any]:
    def rows(model: Any, *columns: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in session.execute(select(*columns).order_by(*columns)).all()]

    return {
        "orders": rows(Order, Order.id, Order.amount_total, Order.currency, Order.status),
        "attempts": rows(
            PaymentAttempt,
            PaymentAttempt.id,
            PaymentAttempt.amount,
            PaymentAttempt.outcome,
            PaymentAttempt.order_id,
        ),
        "distinct_cards": session.execute(
            select(func.count(func.distinct(PaymentAttempt.card_fingerprint)))
        ).scalar_one(),
        "hourly": rows(
            PaymentAttemptHourly,
            PaymentAttemptHourly.hour,
            PaymentAttemptHourly.currency,
            PaymentAttemptHourly.attempts,
            PaymentAttemptHourly.succeeded,
            PaymentAttemptHourly.succeeded_amount,
        ),
        "flags": rows(RiskFlag, RiskFlag.id, RiskFlag.entity_kind, RiskFlag.failures),
        "audit": rows(AuditEntry, AuditEntry.id, AuditEntry.hash),
    }


# --- Finding 5: a masked email stays masked ----------------------------------------------------


def test_finance_cannot_recover_a_masked_email_through_search(shop: Engine) -> None:
    """Finding 5: finance saw `a***@shop.example`, but prefix search said how many orders
    matched, so the full email was recovered letter by letter."""
    prefixes = [JENNY[:n] for n in range(1, len(JENNY))] + ["jenny", "j%", "_", "%@example.com"]
    with session_scope(shop, write=False) as session:
        for prefix in prefixes:
            assert orders.count_orders(session, prefix, full_emails=False) == 0, prefix
            assert orders.search_orders(session, prefix, full_emails=False).empty, prefix
        # The whole address (any case) is still found; support keeps prefix search.
        assert orders.count_orders(session, JENNY.upper(), full_emails=False) == 2
        assert orders.count_orders(session, "jenny", full_emails=True) == 2
    for prefix in prefixes:
        page = data.search_orders(FINANCE, prefix, limit=50, offset=0)
        assert page.total == 0 and page.orders.empty, prefix
    page = data.search_orders(FINANCE, JENNY, limit=50, offset=0)
    assert page.total == 2 and {e.lower() for e in page.orders["customer_email"]} == {
        "j***@example.com"
    }
    assert data.search_orders(SUPPORT, "jenn", limit=50, offset=0).total == 2


def test_finance_sees_no_full_email_on_any_path(shop: Engine) -> None:
    """Finding 5: every other path a finance user reads (order, timeline, alerts, failures)."""
    page = data.search_orders(FINANCE, JENNY, limit=50, offset=0)
    shown: list[Any] = [page.orders.to_csv()]
    for order_id in page.orders["id"]:
        shown.append(data.order(FINANCE, int(order_id)))
        shown.append(data.timeline(FINANCE, int(order_id)))
    shown.append(data.recent_alerts(FINANCE).to_csv())
    text = repr(shown).lower()
    assert JENNY not in text and "j***@example.com" in text
    with session_scope(shop, write=False) as session:
        from core.risk import reviews

        values = [
            reviews.display_value(f.entity_kind, f.entity_value, FINANCE)
            for f in reviews.list_flags(session, None)
        ]
    assert JENNY not in " ".join(values).lower()


# --- Erasure -------------------------------------------------------------------------------------


def test_erasure_leaves_no_trace_and_keeps_figures_and_the_audit_chain(
    shop: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    with session_scope(shop, write=False) as session:
        before = figures(session)
        assert mentions(session, JENNY, JENNY_NAME, JENNY_IP)  # the scan is not blind
        point = anchor.take(session)
    assert point is not None
    anchor.write(point)

    # Dry run: a list of what would change, nothing changed.
    assert cli(["erase", "--email", "Jenny.Rosen@example.com"]) == 0
    dry = capsys.readouterr().out
    assert "would change (dry run)" in dry and "stripe_events.payload" in dry
    assert "orders.customer_email: 2" in dry and JENNY not in dry.lower()
    with session_scope(shop, write=False) as session:
        assert figures(session) == before

    assert cli(["erase", "--email", JENNY, "--reason", "GDPR request #4411", "--apply"]) == 0
    assert "row(s) changed" in capsys.readouterr().out
    with session_scope(shop, write=False) as session:
        assert mentions(session, JENNY, JENNY_NAME, JENNY_IP) == set()
        after = figures(session)
        assert {k: v for k, v in after.items() if k != "audit"} == {
            k: v for k, v in before.items() if k != "audit"
        }
        assert after["audit"][: len(before["audit"])] == before["audit"]  # old rows untouched
        assert anchor.verify(session).ok
        # The other customer is untouched.
        assert {"orders.customer_email", "payment_attempts.ip_address"} <= mentions(
            session, ALEX, ALEX_IP
        )
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.id.desc())).scalars().first()
        assert entry is not None and entry.action == "personal_data.erased"
        assert entry.target == audit.pseudonym("email", JENNY)
    assert cli(["audit", "verify"]) == 0


def test_erasure_by_customer_id_and_its_guards(shop: Engine) -> None:
    with session_scope(shop) as session:
        with pytest.raises(PermissionDenied):
            erasure.erase(session, SUPPORT, customer="cus_alex", reason="ticket 1", apply=True)
        with pytest.raises(erasure.ErasureError):
            erasure.erase(session, ADMIN, customer="cus_alex", reason="", apply=True)
        with pytest.raises(erasure.ErasureError):
            erasure.erase(session, ADMIN, email=ALEX, customer="cus_alex", reason="x", apply=False)
        report = erasure.erase(session, ADMIN, customer="cus_alex", reason="ticket 1", apply=True)
        assert report.found == {"emails": 1, "ips": 1, "names": 1, "customers": 1}
        assert mentions(session, ALEX, "Alex Other", ALEX_IP) == set()
        assert mentions(session, JENNY, JENNY_IP)  # only the one person


def test_support_sees_no_ip_address_or_card_fingerprint(shop: Engine) -> None:
    """Issue 12 [B]: the README's table gives buyer IPs and fingerprints to risk review only."""
    page = data.search_orders(SUPPORT, JENNY, limit=50, offset=0)

    def attempts(actor: Actor) -> str:
        entries = [e for i in page.orders["id"] for e in data.timeline(actor, int(i))]
        return repr([(e.facts, e.technical) for e in entries if e.kind == "payment"])

    support, finance = attempts(SUPPORT), attempts(FINANCE)
    assert JENNY_IP not in support and "fp_cus_jenny" not in support
    assert "4242" in support  # last4 stays for support
    assert JENNY_IP in finance and "fp_cus_jenny" in finance
