"""The dashboard's entrypoint: page config, login, then the navigation the role allows.

    streamlit run dashboard/app.py

Every page the role may use is listed. The others are registered too, but hidden: reaching one
by its URL runs the page, whose first line (`require(...)`) shows a refusal and stops before any
data is read. Permissions are checked again in core for every action.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core import access
from core.access import Actor
from core.settings import ConfigError, get_settings
from dashboard import auth

ROOT = Path(__file__).resolve().parent.parent
PAGES_DIR = ROOT / "pages"


@dataclass(frozen=True)
class PageSpec:
    file: str
    title: str
    permission: str
    icon: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec("overview.py", "Overview", "metrics.view", ":material/dashboard:"),
    PageSpec("orders.py", "Orders", "orders.view", ":material/receipt_long:"),
    PageSpec("payments.py", "Payments", "metrics.view", ":material/payments:"),
    PageSpec("webhooks.py", "Webhooks", "metrics.view", ":material/webhook:"),
    PageSpec("risk.py", "Risk", "risk.review", ":material/gpp_maybe:"),
    PageSpec("promotions.py", "Promotion codes", "promotions.view", ":material/sell:"),
    PageSpec("fulfillment.py", "Manual fulfillment", "fulfillment.request", ":material/inventory:"),
    PageSpec("operations.py", "Reconcile & replay", "events.replay", ":material/sync:"),
    PageSpec("audit_log.py", "Audit log", "audit.view", ":material/policy:"),
)
# Where each role lands after logging in: the first of these it may use.
LANDING = ("overview.py", "orders.py")


def visible_pages(role: str | None) -> list[PageSpec]:
    return [spec for spec in PAGES if access.allowed(role, spec.permission)]


def navigation_for(actor: Actor) -> list[st.Page]:
    allowed = {spec.file for spec in visible_pages(actor.role)}
    landing = next((file for file in LANDING if file in allowed), None)
    return [
        st.Page(
            PAGES_DIR / spec.file,
            title=spec.title,
            icon=spec.icon,
            default=spec.file == landing,
            visibility="visible" if spec.file in allowed else "hidden",
        )
        for spec in PAGES
    ]


def sidebar(actor: Actor, pages: list[st.Page]) -> None:
    """Who is logged in, the pages the role may use, logout, and whether Stripe is real.

    The navigation is drawn here with page links (st.navigation itself is hidden) so that the
    list a person sees is plain elements in the page, which the AppTest suite reads."""
    with st.sidebar:
        st.markdown(f"Signed in as **{actor.username}**  \nRole: **{actor.role}**")
        for page in pages:
            if page.visibility == "visible":
                st.page_link(page, label=page.title, icon=page.icon or None)
        st.divider()
        if st.button("Log out", key=auth.LOGOUT_KEY, icon=":material/logout:"):
            auth.logout()
            st.rerun()
        if get_settings().stripe_secret_key is None:
            st.caption(
                "Stripe: offline stand-in (no STRIPE_SECRET_KEY is set). "
                "Stripe-backed figures and actions are not the real account."
            )


def main() -> None:
    st.set_page_config(page_title="Payments console", page_icon=":material/payments:")
    try:
        get_settings()
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    actor = auth.current_actor() or auth.login_form()
    if actor is None:
        st.stop()
    pages = navigation_for(actor)
    current = st.navigation(pages, position="hidden")
    sidebar(actor, pages)
    current.run()


if __name__ == "__main__":  # streamlit runs the entrypoint as __main__; tests import PAGES
    main()
