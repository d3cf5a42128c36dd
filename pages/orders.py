"""Orders: find an order, then read its one timeline."""

from __future__ import annotations

import streamlit as st

from dashboard import data, inputs, widgets
from dashboard.auth import require

KIND_BADGES = {
    "state": ":blue-badge[state]",
    "attempt": ":orange-badge[payment]",
    "event": ":violet-badge[event]",
    "delivery": ":gray-badge[delivery]",
    "fulfillment": ":green-badge[fulfillment]",
    "action": ":red-badge[operator]",
}

actor = require("orders.view")
st.set_page_config(layout="wide")  # tables and per-currency figures need the width

st.title("Orders")
query, problem = inputs.search_text(
    st.text_input(
        "Search orders",
        key="orders_query",
        placeholder="Email, order id, cs_…, pi_…, cus_… or card last4",
        help="Exact ids and last4 match exactly; an email matches from its start.",
    )
)
if problem:
    widgets.warning(problem)
widgets.reset_pager_on_change("orders", query)
# ?order=<id> opens one order directly: a link to paste into a ticket (no email in the URL).
chosen, problem = inputs.order_id(st.query_params.get("order"))
if problem:
    widgets.warning(problem)

if query:
    offset = widgets.page_offset("orders", widgets.PAGE_SIZE)
    results = data.search_orders(actor, query, limit=widgets.PAGE_SIZE, offset=offset)
    if results.total == 0:
        widgets.warning(f"No order matches “{query}”.")
        st.stop()
    shown = len(results.orders)
    st.caption(f"{results.total:,} order(s) match; showing {offset + 1:,}–{offset + shown:,}.")
    widgets.rows(widgets.orders_table(results.orders), key="orders_results")
    widgets.pager(results.total, widgets.PAGE_SIZE, "orders")
    labels = widgets.order_labels(results.orders)
    chosen = st.selectbox(
        "Open order",
        list(labels),
        index=0 if results.total == 1 else None,
        format_func=labels.__getitem__,
        placeholder="Choose an order to see its timeline",
        key=f"orders_open_{query}_{offset}",
    )
elif chosen is None:
    st.info(
        "Search by email, order id, Checkout Session id, PaymentIntent id, customer id "
        "or card last4."
    )
    st.stop()

if chosen is None:
    st.query_params.pop("order", None)
    st.stop()
st.query_params["order"] = str(chosen)

order = data.order(actor, chosen)
if order is None:
    st.warning(f"There is no order {chosen:d}.")
    st.stop()

st.header(f"Order {order.id:d}")
status, amount, refunded = st.columns(3)
status.metric("Status", widgets.md("{}", order.status))
amount.metric("Amount", widgets.money(order.amount_total, order.currency))
refunded.metric("Refunded", widgets.money(order.amount_refunded, order.currency))
st.markdown(
    widgets.md(
        "Customer email **{}** · Customer {} · Checkout Session {} · PaymentIntent {}",
        order.customer_email or "–",
        widgets.mono(order.customer_id or "–"),
        widgets.mono(order.checkout_session_id or "–"),
        widgets.mono(order.payment_intent_id or "–"),
    )
)

st.subheader("Timeline")
entries = data.timeline(actor, chosen)
if not entries:
    st.info("Nothing recorded for this order yet.")
for entry in entries:
    badge = KIND_BADGES.get(entry.kind) or widgets.md(":gray-badge[{}]", entry.kind)
    st.markdown(
        widgets.md(
            "{} {} **{}**",
            widgets.mono(f"{entry.at:%Y-%m-%d %H:%M:%S}"),
            widgets.Markdown(badge),
            entry.title,
        )
    )
    detail = widgets.describe(entry.detail)
    if detail:
        widgets.caption(detail)
