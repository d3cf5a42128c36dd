"""Promotion codes: every code with its terms and usage, health from our own tables; admins
create, deactivate and reactivate codes."""

from __future__ import annotations

from datetime import UTC, datetime, time

import streamlit as st

from dashboard import live as views
from dashboard import widgets
from dashboard.auth import may, require

actor = require("promotions.view")
st.title("Promotion codes")
views.standin_notice()
widgets.show_flash("promotions")

codes = views.promotion_codes(actor)
per_day, per_code, watch = views.promotion_health(actor, codes)

left, right = st.columns([3, 2])
with left:
    st.subheader("Codes")
    active = sum(1 for c in codes if c.active)
    st.caption(f"{len(codes):,} codes, {active:,} active.")
    widgets.rows(views.codes_table(codes), key="promo_codes")
with right:
    st.subheader("Watch list")
    if watch:
        for warning in watch:
            widgets.warning(widgets.md("**{}**: {}", warning.code, warning.problem))
    else:
        st.success("No active code is near its limit or expiry.")
    st.subheader("Redemptions, last 30 days")
    if per_day.empty:
        st.info("No paid order used a code in the last 30 days.")
    else:
        st.bar_chart(
            widgets.safe_frame(per_day), x="day", y="redemptions", color="code", height=260
        )

st.subheader("Codes in our orders and attempts (last 30 days)")
st.caption("Failed attempts and disputes by code: a code shared on a fraud forum shows here.")
if per_code.empty:
    st.info("No order or attempt used a code in the last 30 days.")
else:
    widgets.rows(per_code, key="promo_usage")

if may(actor, "promotions.manage"):
    st.divider()
    st.subheader("Create a code")
    coupons = sorted({c.coupon.id: c.coupon.describe() for c in codes if c.coupon}.items())
    with st.form("promo_create_form"):
        code = st.text_input("Code (letters, digits, dashes, underscores)", key="pc_code")
        existing = st.selectbox(
            "Coupon",
            ["New coupon", *(f"{cid}: {terms}" for cid, terms in coupons)],
            key="pc_coupon",
        )
        one, two, three = st.columns(3)
        percent = one.text_input("Percent off (1 to 100)", key="pc_percent")
        amount = two.text_input("or amount off, e.g. 5.00", key="pc_amount")
        currency = three.text_input("Currency of the amount", value="usd", key="pc_currency")
        duration = one.selectbox("Duration", ["once", "repeating", "forever"], key="pc_duration")
        months = two.text_input("Months (repeating only)", key="pc_months")
        limit = three.text_input("Redemption limit (optional)", key="pc_limit")
        expires = one.date_input("Expires on (optional, UTC)", value=None, key="pc_expires")
        minimum = two.text_input("Minimum order amount (optional)", key="pc_minimum")
        first_time = three.checkbox("First-time customers only", key="pc_first")
        submitted = st.form_submit_button("Create promotion code")
    if submitted:
        form = {
            "code": code,
            "coupon_id": None if existing == "New coupon" else existing.split(":")[0],
            "percent_off": percent,
            "amount_off": amount,
            "currency": currency if amount else "",
            "duration": duration,
            "duration_in_months": months,
            "max_redemptions": limit,
            "expires_at": datetime.combine(expires, time(23, 59), UTC) if expires else None,
            "minimum_amount": minimum,
            "minimum_amount_currency": currency,
            "first_time_only": first_time,
        }
        result, problems = views.create_code(actor, form)
        for problem in problems:
            widgets.error(problem)
        if result is not None:  # rerun so the list above shows the new code
            widgets.flash("promotions", f"Created promotion code {code} ({result.result_id}).")
            st.rerun()

    st.subheader("Deactivate or reactivate")
    if codes:
        labels = {f"{c.code} ({'active' if c.active else 'inactive'})": c for c in codes}
        picked = labels[st.selectbox("Code", list(labels), key="pc_pick")]
        verb = "Deactivate" if picked.active else "Reactivate"
        if st.button(widgets.md("{} {}", verb, picked.code), key="pc_toggle"):
            ok, message = views.set_code_active(actor, picked.id, not picked.active)
            if ok:
                widgets.flash("promotions", message)
                st.rerun()
            widgets.error(message)
