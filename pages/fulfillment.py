"""Manual fulfillment: for orders paid but not fulfilled. Support requests with a reason; an
admin (never the requester) approves after Stripe confirms the payment live, or fulfils
directly with a reason and the typed order id. Every attempt is audited."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from dashboard import forms, widgets
from dashboard import live as views
from dashboard.auth import may, require

actor = require("fulfillment.request")
st.title("Manual fulfillment")
views.standin_notice()
widgets.show_flash("fulfillment")
st.caption(
    "Only for orders paid but not fulfilled (the fulfiller failed, a webhook was lost). "
    "Stripe is asked live before anything happens; refunded or disputed orders are refused."
)


def show(outcome: views.ManualOutcome, form: str | None = None) -> None:
    if outcome.ok:  # rerun so the tables above show the change, with the form empty again
        if form is not None:
            forms.reset(form)
        widgets.flash("fulfillment", outcome.message)
        st.rerun()
    elif outcome.result == "already_fulfilled":
        widgets.info(outcome.message)
    else:
        widgets.error(outcome.message)


def order_form(
    form: str, prefix: str, reason_label: str, button: str,
    act: Callable[[int, str, str], views.ManualOutcome],
) -> None:  # fmt: skip
    """An order id, a written reason and the order id typed again, then `act`; the form is
    empty again after a success (its widgets are keyed by the form's generation)."""
    generation = forms.generation(prefix)
    with st.form(f"{form}_{generation}"):
        order_id = st.number_input(
            "Order id",
            min_value=1,
            max_value=2**53 - 1,  # the largest integer a browser holds exactly
            step=1,
            value=None,
            key=f"{prefix}_order" + (f"_{generation}" if generation else ""),
        )
        reason = st.text_area(
            reason_label,  # markup: console text
            max_chars=2000,
            key=f"{prefix}_reason" + (f"_{generation}" if generation else ""),
        )
        typed = st.text_input(
            "Type the order id again to confirm",
            key=f"{prefix}_confirm" + (f"_{generation}" if generation else ""),
        )
        submitted = st.form_submit_button(button)  # markup: console text
    if submitted:
        if order_id is None:
            st.error("Enter the order id.")
        else:
            with st.spinner(f"Order {int(order_id)}: checking with Stripe..."):
                outcome = act(int(order_id), reason, typed)
            show(outcome, prefix)


st.subheader("Orders paid but not fulfilled")
awaiting = views.awaiting_orders(actor)
if awaiting.empty:
    st.success("Every paid order is fulfilled.")
else:
    widgets.rows(awaiting, key="mf_awaiting")

st.subheader("Request a manual fulfillment")
order_form(
    "mf_request_form", "mf", "Reason (what failed, who asked)", "Request fulfillment",
    lambda order_id, reason, typed: views.request_fulfillment(actor, order_id, reason, typed),
)  # fmt: skip

if may(actor, "fulfillment.approve"):
    st.subheader("Requests waiting for approval")
    pending = views.requests(actor, pending_only=True)
    if not pending:
        st.info("No request is waiting.")
    for request in pending:
        with st.container(border=True):
            st.markdown(
                widgets.md(
                    "**#{:d}** · order **{:d}** · requested by {} on {:%Y-%m-%d %H:%M} UTC",
                    request.id,
                    request.order_id,
                    widgets.mono(request.requested_by),
                    request.requested_at,
                )
            )
            widgets.text(request.reason)
            if request.requested_by == actor.username:
                st.caption("Your own request: another admin must approve it.")
                continue
            confirm = st.text_input(
                f"Type order id {request.order_id:d} to approve",
                key=f"mf_approve_confirm_{request.id}",
            )
            approve_col, reject_col = st.columns(2)
            if approve_col.button("Approve and fulfil", key=f"mf_approve_{request.id}"):
                with st.spinner(f"Order {request.order_id}: checking with Stripe..."):
                    outcome = views.approve(actor, request.id, confirm)
                show(outcome)
            note = reject_col.text_input("Note for rejecting", key=f"mf_reject_note_{request.id}")
            if reject_col.button("Reject", key=f"mf_reject_{request.id}"):
                show(views.reject(actor, request.id, note))

    st.subheader("Fulfil directly")
    order_form(
        "mf_perform_form", "mf_d", "Reason", "Fulfil now",
        lambda order_id, reason, typed: views.perform(actor, order_id, reason, typed),
    )  # fmt: skip

st.subheader("Recent requests")
recent = views.requests(actor, pending_only=False)
if recent:
    widgets.rows(
        [
            {
                "request": r.id,
                "order": r.order_id,
                "requested by": r.requested_by,
                "status": r.status,
                "decided by": r.decided_by,
                "outcome": r.outcome,
            }
            for r in recent
        ],
        key="mf_recent",
    )
else:
    st.caption("No request yet.")
