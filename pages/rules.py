"""Rules (admins): the detection rules per entity kind and pattern, the allow list, a backtest
of an edit against the live rules over a past period, and saving it (versioned, audited)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from dashboard import live as views
from dashboard import widgets
from dashboard.auth import require

actor = require("risk.rules")
st.set_page_config(layout="wide")
st.title("Risk rules")
st.caption(
    "A flag is raised when one entity has at least the threshold of failed payments within the "
    "window (card testing: that many distinct cards). A rule may count only some failures: in "
    "one currency, from a minimum amount in it, or with given decline codes (Stripe's decline or "
    "failure codes, such as insufficient_funds, incorrect_cvc); the flag then shows all the "
    "entity's failures in its span. Entities on the allow list never flag. Backtest an edit "
    "before saving it: saving re-derives the open flags and incidents."
)

outcome = st.session_state.pop("rules_outcome", None)
if outcome is not None:
    (widgets.success if outcome[0] else widgets.error)(outcome[1])

state = views.rules_state(actor)
st.text(
    f"Live: version {state.version}" if state.version else "Live: the defaults (no version saved)"
)
table = st.data_editor(
    state.table,
    hide_index=True,
    disabled=["entity", "pattern"],
    column_config={
        "threshold (failures)": st.column_config.NumberColumn(min_value=1, max_value=10_000),
        "window (minutes)": st.column_config.NumberColumn(min_value=1, max_value=7 * 24 * 60),
        "only currency": st.column_config.SelectboxColumn(
            options=["", *views.CURRENCY_CODES], help="Blank: every currency."
        ),
        "only from amount": st.column_config.TextColumn(
            help="In the currency's major units, such as 50 or 49.99; needs a currency."
        ),
        "only decline codes": st.column_config.TextColumn(
            help="Comma-separated, such as fraudulent, stolen_card; blank: every failure."
        ),
    },
    key=f"rules_table_{state.version}",
)
allow = st.text_area(
    "Allow list (one per line, kind: value; kinds: card, customer, email, ip, promotion_code)",
    state.allow,
    key=f"rules_allow_{state.version}",
)

st.subheader("Backtest")
today = datetime.now(UTC).date()
period = st.date_input(
    "Period (UTC)", (today - timedelta(days=30), today), max_value=today, key="rules_period"
)
if st.button("Backtest these rules", key="rules_backtest"):
    start, end = (period[0], period[-1]) if isinstance(period, tuple) and period else (today, today)
    since = datetime.combine(start, time.min, UTC)
    until = datetime.combine(end, time.max, UTC)
    result = views.run_backtest(actor, table, allow, since, until)
    if isinstance(result, str):
        widgets.error(result)
    elif result is not None:
        st.text(f"{result.attempts} failed attempts read.")
        live_col, new_col, diff_col = st.columns(3)
        live_col.metric("Live rules: incidents", len(result.current.incidents))
        live_col.metric("Live rules: flags", len(result.current.flags))
        new_col.metric(
            "Edited rules: incidents",
            len(result.proposed.incidents),
            f"{len(result.proposed.incidents) - len(result.current.incidents):+d}",
        )
        new_col.metric(
            "Edited rules: flags",
            len(result.proposed.flags),
            f"{len(result.proposed.flags) - len(result.current.flags):+d}",
        )
        diff_col.metric("Only with the edit", len(result.only_proposed))
        diff_col.metric("Only with the live rules", len(result.only_current))
        st.text("Flags only the edited rules raise")
        st.dataframe(views.flag_rows(result.only_proposed, actor), hide_index=True)
        st.text("Flags only the live rules raise")
        st.dataframe(views.flag_rows(result.only_current, actor), hide_index=True)

st.subheader("Save")


def save(base_version: int) -> None:
    st.session_state["rules_outcome"] = views.save_rules(
        actor,
        st.session_state.get("rules_edited", state.table),
        str(st.session_state.get("rules_allow_edited", "")),
        str(st.session_state.get("rules_note") or ""),
        base_version,
    )


# The callback runs before the rerun: hand it the edit as shown now.
st.session_state["rules_edited"] = table
st.session_state["rules_allow_edited"] = allow
with st.form(f"rules_save_{state.version}", clear_on_submit=True):
    st.text_input("Why (kept in the audit log)", key="rules_note", max_chars=500)
    st.form_submit_button(
        f"Save as version {state.version + 1:d}",
        type="primary",
        on_click=save,
        args=(state.version,),
    )
