"""Risk: incidents (flags that share attempts: one attack seen through its cards, IP address,
email, customer, promotion code), the evidence behind one, and its review."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import live as views
from dashboard import widgets
from dashboard.auth import require

actor = require("risk.review")
st.set_page_config(layout="wide")
st.title("Risk")
st.caption(
    "Incidents: bursts of failed payments and card testing (many cards failing for one buyer), "
    "grouped when they share attempts, counted in Stripe's time. Confirm an attack or dismiss "
    "a false alarm, with a note: one review closes all the incident's flags and is audited."
)

# The outcome of the review submitted on the previous run (set by its callback).
outcome = st.session_state.pop("risk_review_outcome", None)
if outcome is not None:
    (widgets.success if outcome[0] else widgets.error)(outcome[1])


def submit(incident_id: int, decision: str, seen: frozenset[int], note_key: str) -> None:
    """Runs before the rerun, with the incident id bound when its form was drawn: the review
    lands on the incident shown, whatever the list looks like afterwards."""
    note = str(st.session_state.get(note_key) or "")
    st.session_state["risk_review_outcome"] = views.review_incident(
        actor,
        incident_id,
        "confirm" if decision == "confirm" else "dismiss",
        note,
        seen,
    )


show = st.segmented_control(
    "Show", ["Open", "Confirmed", "Dismissed"], default="Open", key="risk_status"
)
status = (show or "Open").lower()
found = views.incidents(actor, status)
if not found:
    widgets.success("No open incident." if status == "open" else f"No {status} incident.")
    st.stop()

widgets.rows(
    [
        {
            "incident": f"#{i.id}",
            "entities": "; ".join(i.entities),
            "flags": i.flags,
            "from (UTC)": f"{i.first_seen:%Y-%m-%d %H:%M:%S}",
            "to (UTC)": f"{i.last_seen:%Y-%m-%d %H:%M:%S}",
            "reviewed by": i.reviewed_by,
        }
        for i in found
    ],
    key="risk_incidents",
)

by_label = {widgets.plain(i.label): i.id for i in found}  # labels carry entities: text
# An alert links here as ?incident=N: open on that incident when it is in the list.
linked = st.query_params.get("incident")
target = next((widgets.plain(i.label) for i in found if str(i.id) == linked), None)
if target is not None and st.session_state.get("_risk_linked") != linked:
    st.session_state["_risk_linked"] = linked  # once: the reviewer may then choose another
    st.session_state["risk_incident"] = target
chosen = st.selectbox("Incident", list(by_label), key="risk_incident")
detail = views.incident_detail(actor, by_label[chosen]) if chosen else None
if detail is None:
    st.warning("This incident no longer exists: it was merged into another one. Refresh.")
    st.stop()

incident = detail.incident
st.subheader(f"Incident #{incident.id:d}")
flags_m, attempts_m, cards_m, span_m = st.columns(4)
flags_m.metric("Flags", len(detail.flags))
attempts_m.metric("Failed attempts", len(detail.attempts))
cards_m.metric("Distinct cards", f"{detail.cards:,}")
minutes = (incident.last_seen - incident.first_seen).total_seconds() / 60
span_m.metric("Within", f"{minutes:.0f} min")
if detail.amounts:
    st.text("Failed amounts: " + ", ".join(detail.amounts.values()))

st.dataframe(
    [
        {
            "flag": f"#{f.id}",
            "pattern": views.PATTERN_LABELS.get(f.pattern, f.pattern),
            "entity": f"{views.KIND_LABELS.get(f.kind, f.kind)}: {f.entity}",
            "failures": f.failures,
            "cards": f.distinct_cards,
            "from (UTC)": f"{f.window_start:%Y-%m-%d %H:%M:%S}",
            "to (UTC)": f"{f.window_end:%Y-%m-%d %H:%M:%S}",
            "status": f.status,
        }
        for f in detail.flags
    ],
    key="risk_flags",
)

st.subheader("Timeline of the entities' attempts")
timeline = detail.timeline
# One chart per currency: amounts of different currencies never share an axis.
for currency in sorted(c for c in timeline["currency"].dropna().unique()):
    part_c = timeline[timeline["currency"] == currency]
    figure = go.Figure()
    for outcome_name, color in (("failed", "#c62828"), ("succeeded", "#2e7d32")):
        part = part_c[part_c["outcome"] == outcome_name]
        figure.add_trace(
            go.Scatter(
                x=part["time (UTC)"],
                y=part["amount"],
                mode="markers",
                name=outcome_name,
                marker={"color": color, "size": 9},
                text=part["decline"],
                hovertemplate="%{x}<br>%{y}<br>%{text}<extra></extra>",
            )
        )
    figure.add_vrect(
        x0=incident.first_seen,
        x1=incident.last_seen,
        fillcolor="#c62828",
        opacity=0.08,
        line_width=0,
        annotation_text="incident",
    )
    figure.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title=f"amount ({currency})",
        title=str(currency),
    )
    st.plotly_chart(figure, key=f"risk_timeline_{currency}")

st.subheader("Attempts behind the incident")
st.dataframe(detail.attempts, hide_index=True, key="risk_attempts")
if detail.order_ids:
    st.text(
        "Orders: "
        + ", ".join(str(order_id) for order_id in detail.order_ids)
        + " (open them on the Orders page by id)."
    )
else:
    st.caption("No order is linked to these attempts (failed before checkout completed).")

st.subheader(f"Review incident #{incident.id:d}")
if incident.status != "open":
    widgets.info(f"{incident.status.capitalize()} by {incident.reviewed_by}.")
    widgets.text(incident.note or "")
else:
    note_key = f"risk_note_{incident.id}"
    with st.form(f"risk_review_{incident.id}", clear_on_submit=True):
        st.text_area("Note (what you checked)", key=note_key, max_chars=2000)
        confirm, dismiss = st.columns(2)
        for column, label, decision, kind in (
            (confirm, "Confirm attack", "confirm", "primary"),
            (dismiss, "Dismiss", "dismiss", "secondary"),
        ):
            column.form_submit_button(
                label,  # markup: console text
                type=kind,  # type: ignore[arg-type]
                on_click=submit,
                args=(incident.id, decision, detail.flag_ids, note_key),
            )
