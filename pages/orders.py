"""Orders: find an order, then read its one timeline."""

from __future__ import annotations

import streamlit as st

from dashboard import data, widgets
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
query = st.text_input(
    "Search orders",
    key="orders_query",
    placeholder="Email, order id, cs_…, pi_…, cus_… or card last4",
    help="Exact ids and last4 match exactly; an email matches from its start.",
).strip()
widgets.reset_pager_on_change("orders", query)
# ?order=<id> opens one order directly: a link to paste into a ticket (no email in the URL).
linked = st.query_params.get("order", "")
chosen: int | None = int(linked) if linked.isdigit() else None

if query:
    offset = widgets.page_offset("orders", widgets.PAGE_SIZE)
    results = data.search_orders(actor, query, limit=widgets.PAGE_SIZE, offset=offset)
    if results.total == 0:
        st.warning(f"No order matches “{query}”.")
        st.stop()
    shown = len(results.orders)
    st.caption(f"{results.total:,} order(s) match; showing {offset + 1}–{offset + shown}.")
    st.dataframe(widgets.orders_table(results.orders), hide_index=True, key="orders_results")
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
    st.warning(f"There is no order {chosen}.")
    st.stop()

st.header(f"Order {order.id}")
status, amount, refunded = st.columns(3)
status.metric("Status", order.status)
amount.metric("Amount", widgets.money(order.amount_total, order.currency))
refunded.metric("Refunded", widgets.money(order.amount_refunded, order.currency))
st.markdown(
    f"Customer email **{widgets.escape_markdown(order.customer_email or '–')}** · "
    f"Customer `{order.customer_id or '–'}` · "
    f"Checkout Session `{order.checkout_session_id or '–'}` · "
    f"PaymentIntent `{order.payment_intent_id or '–'}`"
)

st.subheader("Timeline")
entries = data.timeline(actor, chosen)
if not entries:
    st.info("Nothing recorded for this order yet.")
for entry in entries:
    badge = KIND_BADGES.get(entry.kind, f":gray-badge[{entry.kind}]")
    st.markdown(
        f"`{entry.at:%Y-%m-%d %H:%M:%S}` {badge} **{widgets.escape_markdown(entry.title)}**"
    )
    detail = widgets.describe(entry.detail)
    if detail:
        st.caption(widgets.escape_markdown(detail))
