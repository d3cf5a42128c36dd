"""Orders: an exact id opens its order (or customer); other searches list what matched and how.
Then the order's summary header and its one readable timeline."""

from __future__ import annotations

import streamlit as st

from dashboard import data, inputs, order_view, widgets
from dashboard.auth import require

actor = require("orders.view")
st.set_page_config(layout="wide")  # tables and per-currency figures need the width

st.title("Orders")
query, problem = inputs.search_text(
    st.text_input(
        "Search orders",
        key="orders_query",
        placeholder="#order id, email or @domain, cs_…, pi_…, cus_… or card last4",
        help="An exact id (#1461, cs_…, pi_…, ch_…, cus_…) opens it directly; an email matches "
        "from its start; @example.com finds a whole email domain; 4 digits are also a card's "
        "last4.",
    )
)
if problem:
    widgets.warning(problem)
widgets.reset_pager_on_change("orders", query)
# ?order=<id> opens one order directly: a link to paste into a ticket (no email in the URL).
chosen, problem = inputs.order_id(st.query_params.get("order"))
if problem:
    widgets.warning(problem)


def results_table(label: str) -> int | None:
    """The matching orders with the field each matched on, a pager, and a chooser."""
    offset = widgets.page_offset("orders", widgets.PAGE_SIZE)
    results = data.search_orders(actor, query, limit=widgets.PAGE_SIZE, offset=offset)
    if results.refused:
        widgets.warning(results.refused)
        st.stop()
    if results.total == 0:
        st.warning("No order matches this search.")
        st.stop()
    shown = len(results.orders)
    st.caption(f"{results.total:,} order(s) match; showing {offset + 1:,}–{offset + shown:,}.")
    widgets.rows(widgets.orders_table(results.orders), key="orders_results")
    widgets.pager(results.total, widgets.PAGE_SIZE, "orders")
    labels = widgets.order_labels(results.orders)
    picked: int | None = st.selectbox(
        label,  # markup: console text
        list(labels),
        index=0 if results.total == 1 else None,
        format_func=labels.__getitem__,
        placeholder="Choose an order to see its timeline",
        key=f"orders_open_{query}_{offset}",
    )
    return picked


if query:
    exact = data.exact_match(actor, query)
    if exact is not None and exact.order_id is not None:
        chosen = exact.order_id  # the id of an order (or its session, intent, charge): open it
        others = data.search_orders(actor, query, limit=1, offset=0).total - 1
        if others > 0:
            with st.expander(f"{others:,} more order(s) have a card ending in these digits"):
                chosen = results_table("Open another order") or chosen
    else:
        if exact is not None and exact.customer_id is not None:
            summary = data.customer(actor, exact.customer_id)
            if summary is not None:
                order_view.customer_header(summary)
        chosen = results_table("Open order")
elif chosen is None:
    st.info(
        "Search by order id (#1461), email or @domain, Checkout Session id, PaymentIntent id, "
        "customer id or card last4."
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

order_view.summary(order)
st.subheader("Timeline")
order_view.timeline(data.timeline(actor, chosen))
