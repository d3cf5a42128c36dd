"""Promotion codes: every code with its terms and usage, health from our own tables; admins
create, deactivate and reactivate codes."""

from __future__ import annotations

import streamlit as st

from dashboard import forms, widgets
from dashboard import live as views
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
    widgets.codes_table(views.codes_table(codes), key="promo_codes")
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

CURRENCIES = views.currencies()


def create_form() -> None:
    """Every field is checked as it is typed; Create is enabled only when all are valid, names
    the code it creates, and the form starts empty again after a success."""
    st.subheader("Create a code")
    coupons = sorted({c.coupon.id: c.coupon.describe() for c in codes if c.coupon}.items())

    def key(field: str) -> str:
        return forms.key("pc", field)

    code = st.text_input("Code (letters, digits, dashes, underscores)", key=key("code"))
    existing = st.selectbox(
        "Coupon", ["New coupon", *(f"{cid}: {terms}" for cid, terms in coupons)], key=key("coupon")
    )
    one, two, three = st.columns(3)
    percent = one.text_input("Percent off (1 to 100)", key=key("percent"))
    amount = two.text_input("or amount off, e.g. 5.00", key=key("amount"))
    currency = three.selectbox(
        "Currency of the amounts", CURRENCIES, index=CURRENCIES.index("usd"), key=key("currency")
    )
    duration = one.selectbox("Duration", ["once", "repeating", "forever"], key=key("duration"))
    months = two.text_input("Months (repeating only)", key=key("months"))
    limit = three.text_input("Redemption limit (optional)", key=key("limit"))
    expires = one.text_input("Expires on (optional, UTC, YYYY-MM-DD)", key=key("expires"))
    minimum = two.text_input("Minimum order amount (optional)", key=key("minimum"))
    first_time = three.checkbox("First-time customers only", key=key("first"))
    form = {
        "code": code,
        "coupon_id": None if existing in (None, "New coupon") else str(existing).split(":")[0],
        "percent_off": percent,
        "amount_off": amount,
        "currency": currency,
        "duration": duration,
        "duration_in_months": months,
        "max_redemptions": limit,
        "expires_at": expires,
        "minimum_amount": minimum,
        "minimum_amount_currency": currency,
        "first_time_only": first_time,
    }
    new, problems = views.check_promotion(form)
    typed = {name for name, raw in form.items() if raw not in ("", None, False)}
    for field, problem in problems.items():
        if field in typed or (field == "percent_off" and typed & {"percent_off", "amount_off"}):
            widgets.error(problem)
    if new is None:
        st.caption("Create is enabled once every field above is valid.")
    else:
        widgets.info(widgets.md("Will create {}", new.describe()), icon=":material/sell:")
    if st.button("Create promotion code", key=key("create"), disabled=new is None) and new:
        with st.spinner(f"Creating promotion code {new.code} in Stripe..."):
            ok, message = views.create_code(actor, new)
            if ok:
                forms.reset("pc")  # before anything else is drawn: a second click is stale
        if ok:
            widgets.flash("promotions", widgets.escape_markdown(message))
            st.rerun()
        widgets.error(message)


def toggle_form() -> None:
    """Pick a code by its id (the picker stays on it after the change), then confirm."""
    st.subheader("Deactivate or reactivate")
    if not codes:
        return
    by_id = {c.id: c for c in codes}
    picked_id = st.selectbox(
        "Code",
        list(by_id),
        format_func=lambda i: (
            f"{by_id[i].code} ({'active' if by_id[i].active else 'inactive'}) · {i}"
        ),
        key="pc_pick",
    )
    picked = by_id[picked_id]
    verb = "Deactivate" if picked.active else "Reactivate"
    asked = forms.pending("pc_toggle")
    if asked is None:
        if st.button(widgets.md("{} {} ({})...", verb, picked.code, picked.id), key="pc_toggle"):
            forms.ask("pc_toggle", {"id": picked.id, "code": picked.code, "active": picked.active})
            st.rerun()
        return
    verb = "Deactivate" if asked["active"] else "Reactivate"
    consequence = (
        "Customers can no longer redeem it (it can be reactivated later)."
        if asked["active"]
        else "Customers can redeem it again."
    )
    with st.container(border=True):
        widgets.warning(
            widgets.md(
                "{} promotion code {} ({})? {}", verb, asked["code"], asked["id"], consequence
            )
        )
        yes, no = st.columns(2)
        if yes.button(
            widgets.md("Yes, {} {}", verb.lower(), asked["code"]), key="pc_confirm", type="primary"
        ):
            with st.spinner(f"{verb[:-1]}ing {asked['code']} in Stripe..."):
                ok, message = views.set_code_active(
                    actor, asked["id"], asked["code"], not asked["active"]
                )
                if ok:
                    forms.cancel("pc_toggle")
            if ok:
                widgets.flash("promotions", widgets.escape_markdown(message))
                st.rerun()
            widgets.error(message)
        if no.button("Cancel", key="pc_cancel"):
            forms.cancel("pc_toggle")
            st.rerun()


if may(actor, "promotions.manage"):
    st.divider()
    create_form()
    toggle_form()
