"""Users (admin): who can log in, with role, last login and lock state; unlock, end sessions,
change a role, add a user with a one-time password; and erasure requests. Every change is
audited; role changes and revocations ask for the username as confirmation."""

from __future__ import annotations

import streamlit as st

from dashboard import live, widgets
from dashboard.auth import require

ROLES = ("support", "finance", "admin")


def done(ok: bool, message: str) -> None:
    """A success survives the rerun that shows the changed table; an error shows here."""
    if not ok:
        widgets.error(message)
        return
    widgets.flash("users", message)
    st.rerun()


actor = require("users.manage")
st.title("Users")
widgets.show_flash("users")

users = live.users_table(actor)
widgets.table(users, key="users_table")
names = list(users["username"])

if names:
    st.subheader("Change a user")
    who = st.selectbox("User", names, key="users_pick")
    unlock_col, revoke_col = st.columns(2)
    if unlock_col.button("Unlock (clear failed logins)", key="users_unlock"):
        ok, message = live.unlock_user(actor, who)
        done(ok, message)
    with revoke_col.form("users_revoke"):
        confirm = st.text_input("Type the username to end all their sessions", key="users_rc")
        if st.form_submit_button("End sessions"):
            ok, message = live.revoke_user_sessions(actor, who, confirm)
            done(ok, message)
    with st.form("users_role"):
        role = st.selectbox("New role", ROLES, key="users_role_pick")
        confirm = st.text_input("Type the username to confirm the role change", key="users_rcc")
        if st.form_submit_button("Change role"):
            ok, message = live.change_user_role(actor, who, role, confirm)
            done(ok, message)

st.subheader("Add a user")
with st.form("users_add"):
    new_name = st.text_input("Username", key="users_new_name")
    display = st.text_input("Display name (optional)", key="users_new_display")
    new_role = st.selectbox("Role", ROLES, key="users_new_role")
    if st.form_submit_button("Add user"):
        ok, message, password = live.add_user(actor, new_name, new_role, display)
        if ok and password:
            widgets.success(message)
            st.write("One-time password (shown once; they must change it at first login):")
            st.code(password, language=None)
        else:
            widgets.error(message)

st.subheader("Erase a person's data (erasure request)")
st.caption(
    "Pseudonymises their email, name and IP addresses everywhere we hold them; amounts, "
    "states, ids and the audit log are kept. Preview first. Stripe must be asked separately "
    "(see the README)."
)
with st.form("users_erase"):
    subject = st.text_input("Email or customer id (cus_…)", key="erase_who")
    reason = st.text_input("Reason (the request's reference)", key="erase_reason")
    confirmed = st.checkbox("I have checked the preview: erase now", key="erase_confirm")
    preview, apply = st.columns(2)
    wants_preview = preview.form_submit_button("Preview")
    wants_apply = apply.form_submit_button("Erase")
    if wants_preview or wants_apply:
        really = wants_apply and confirmed
        if wants_apply and not confirmed:
            st.error("Tick the confirmation to erase; showing the preview instead.")
        ok, report = live.erase_person(actor, subject, reason, apply=really)
        if ok:
            st.text(report)  # plain text: never markdown
        else:
            widgets.error(report)
