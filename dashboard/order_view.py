"""Drawing one order for support: the summary header and the readable timeline.

Every value that came from Stripe, a customer or a colleague is drawn as plain text (st.text,
metrics, tables, JSON), never inside markdown; markdown here carries only our own constants."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from core.console.declines import dispute_reason_label
from core.console.orders import CustomerSummary, OrderDetail
from core.console.timeline import TimelineEntry, when
from core.money import format_minor
from dashboard import widgets
from dashboard.safe import md

EMPTY = "–"  # the one way an empty value is shown
KIND_BADGES = {
    "created": ":gray-badge[checkout]",
    "payment": ":orange-badge[payment]",
    "status": ":blue-badge[status]",
    "fulfillment": ":green-badge[fulfillment]",
    "refund": ":violet-badge[refund]",
    "dispute": ":red-badge[dispute]",
    "request": ":green-badge[request]",
    "action": ":gray-badge[operator]",
    "event": ":gray-badge[Stripe event]",
}
STATUS_WORDS = {
    "pending": "Pending payment",
    "paid": "Paid, not fulfilled",
    "fulfilled": "Fulfilled",
    "failed": "Payment failed",
    "expired": "Expired unpaid",
    "refunded": "Refunded",
    "partially_refunded": "Partially refunded",
    "disputed": "Disputed",
}


def status_words(status: str) -> str:
    return STATUS_WORDS.get(status, status.replace("_", " "))


def _money(amount: int | None, currency: str | None) -> str:
    return EMPTY if amount is None else format_minor(int(amount), currency)


def _at(at: datetime | None) -> str:
    return EMPTY if at is None else when(at)


def summary(order: OrderDetail) -> None:
    """What support is asked about, at a glance: status, money, customer and the key times,
    refunds and the dispute, all times in UTC with the zone named."""
    st.header(f"Order #{order.id:d}")
    status, amount, refunded = st.columns(3)
    status.metric("Status", md("{}", status_words(order.status)))
    amount.metric("Amount", md("{}", _money(order.amount_total, order.currency)))
    refunded.metric(
        "Refunded",
        md("{}", _money(order.amount_refunded, order.currency) if order.amount_refunded else EMPTY),
    )
    # Times as one line of text: a metric's large type would clip them at 1280 px.
    times = [f"Paid at: {_at(order.paid_at)}", f"Fulfilled at: {_at(order.fulfilled_at)}"]
    if order.amount_refunded or order.refunds:
        times.append(f"Refunded at: {_at(order.last_refund_at)}")
    widgets.text(" · ".join(times))
    if order.dispute is not None:
        dispute = order.dispute
        widgets.text(
            f"Disputed at: {_at(dispute.at)} · "
            f"Amount: {_money(dispute.amount, dispute.currency or order.currency)} · "
            f"Respond by: {_at(dispute.respond_by)}\n"
            f"Dispute reason: {dispute_reason_label(dispute.reason) or EMPTY}"
        )
    # Plain text, not a table: support copies these ids into tickets and Stripe's dashboard.
    widgets.text(
        f"Customer email: {order.customer_email or EMPTY} · Customer: {order.customer_id or EMPTY}"
    )
    widgets.text(
        f"Checkout Session: {order.checkout_session_id or EMPTY} · "
        f"PaymentIntent: {order.payment_intent_id or EMPTY} · Created at: {_at(order.created_at)}"
    )


def customer_header(customer: CustomerSummary) -> None:
    st.header("Customer")
    widgets.text(f"{customer.customer_id} · {customer.email or 'no email'}")
    orders, paid, first = st.columns(3)
    orders.metric("Orders", f"{customer.orders:,}")
    paid.metric("Paid orders", f"{customer.paid_orders:,}")
    first.metric("First order", md("{}", _at(customer.first_order_at)))


def timeline(entries: list[TimelineEntry]) -> None:
    """One bordered block per entry: when, what kind, the sentence, its facts; the Stripe
    events and deliveries behind it folded under "Technical details"."""
    if not entries:
        st.info("Nothing recorded for this order yet.")
    for number, entry in enumerate(entries):
        with st.container(border=True, key=f"timeline_{number}"):
            st.markdown(md("{} {}", KIND_BADGES.get(entry.kind, ""), when(entry.at)))
            widgets.text(entry.title)
            if entry.facts:
                widgets.text("\n".join(f"{label}: {value}" for label, value in entry.facts.items()))
            if entry.technical or entry.events:
                with st.expander("Technical details"):
                    _technical(entry, number)


def _technical(entry: TimelineEntry, number: int) -> None:
    if entry.technical:
        st.dataframe(
            widgets.safe_frame(
                {"Field": list(entry.technical), "Value": list(entry.technical.values())}
            ),
            hide_index=True,
            key=f"timeline_{number}_ids",
        )
    if not entry.events:
        return
    rows = [
        {
            "Stripe event": event.event_id,
            "Type": event.type,
            "Created": when(event.created),
            "Result": event.status,
            "Source": event.source,
            "Delivered": when(delivery.received_at),
            "Delivery result": f"{delivery.outcome} (HTTP {delivery.http_status})",
            "Took (ms)": f"{delivery.duration_ms:.0f}",
            "Error": delivery.error or event.last_error or EMPTY,
        }
        for event in entry.events
        for delivery in event.deliveries
    ]
    undelivered = [
        {
            "Stripe event": event.event_id,
            "Type": event.type,
            "Created": when(event.created),
            "Result": event.status,
            "Source": event.source,
            "Delivered": EMPTY,
            "Delivery result": EMPTY,
            "Took (ms)": EMPTY,
            "Error": event.last_error or EMPTY,
        }
        for event in entry.events
        if not event.deliveries
    ]
    st.dataframe(
        widgets.safe_frame(rows + undelivered), hide_index=True, key=f"timeline_{number}_ev"
    )
    for event in entry.events:
        if event.payload is not None:
            widgets.text(f"Raw payload of {event.event_id}")
            st.json(event.payload, expanded=False)
