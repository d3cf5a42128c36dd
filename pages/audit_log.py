"""Audit log (admin): who did what, filterable and paged, with the hash chain's status."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import streamlit as st

from dashboard import data, widgets
from dashboard.auth import require

PAGE_SIZE = 50
ANYONE = "(any)"

actor = require("audit.view")
st.title("Audit log")

chain = data.audit_chain(actor)
if chain.ok:
    st.success(
        f"Chain intact: {chain.checked:,} entries verified (re-checked every minute).",
        icon=":material/verified:",
    )
else:
    st.error(
        widgets.md(
            "Chain broken at entry {}: {}. {:,} entries before it verify. "
            "Investigate before trusting later entries.",
            chain.broken_at,
            chain.problem,
            chain.checked,
        ),
        icon=":material/gpp_bad:",
    )

actors, actions = data.audit_choices(actor)
today = datetime.now(UTC).date()
left, middle, right = st.columns(3)
who = left.selectbox("Actor", [ANYONE, *actors], key="audit_actor")
what = middle.selectbox("Action", [ANYONE, *actions], key="audit_action")
picked = right.date_input(
    "From / to (UTC, inclusive)",
    value=(today - timedelta(days=29), today),
    max_value=today,
    key="audit_dates",
)
days = [
    day for day in (picked if isinstance(picked, tuple) else (picked,)) if isinstance(day, date)
]
start, end = (min(days), max(days)) if days else (today, today)  # one date while picking the second
filters = data.AuditFilter(
    actor=None if who == ANYONE else who,
    action=None if what == ANYONE else what,
    since=datetime.combine(start, time.min, UTC),
    until=datetime.combine(end + timedelta(days=1), time.min, UTC),
)

widgets.reset_pager_on_change("audit", filters)
offset = widgets.page_offset("audit", PAGE_SIZE)
entries = data.audit_log(actor, filters, limit=PAGE_SIZE, offset=offset)
st.caption(f"{entries.total:,} matching entries, newest first.")
if entries.total:
    widgets.rows(entries.rows, key="audit_table")
else:
    st.info("No entries match these filters.")
widgets.pager(entries.total, PAGE_SIZE, "audit")
