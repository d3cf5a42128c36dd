"""The dashboard's entrypoint: page config, login, then the navigation the role allows.

    streamlit run dashboard/app.py

The sidebar lists the pages the role may use. The others are registered too, but hidden:
reaching one by its URL runs the page, whose first line (`require(...)`) shows a refusal and
stops before any data is read. Permissions are checked again in core for every action.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.auth import permissions
from core.auth.permissions import Actor
from core.settings import ConfigError, get_settings
from dashboard import auth
from dashboard.safe import body, md

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
    return [spec for spec in PAGES if permissions.allowed(role, spec.permission)]


def landing_file(role: str | None) -> str | None:
    allowed = {spec.file for spec in visible_pages(role)}
    return next((file for file in LANDING if file in allowed), None)


def register_pages() -> tuple[st.Page, dict[str, st.Page]]:
    """Every page, registered hidden (the sidebar draws the role's own links), and a home page
    at "/" that sends each role to its landing page.

    Registering all of them before the login form lets a link to a page survive the login:
    after logging in, that page runs, and its `require(...)` refuses a role that may not use
    it. Without registration Streamlit would quietly show some other page instead."""
    pages = {
        spec.file: st.Page(
            PAGES_DIR / spec.file, title=spec.title, icon=spec.icon, visibility="hidden"
        )
        for spec in PAGES
    }

    def home() -> None:
        actor = auth.current_actor()
        landing = landing_file(actor.role if actor else None)
        if landing is None:
            st.error(auth.FORBIDDEN)
            st.stop()
        if auth.cookie_pending():
            # A switch now would end this run before the browser has stored the login cookie;
            # the cookie manager reruns the app once it has, and that run switches.
            spec = next(spec for spec in PAGES if spec.file == landing)
            st.page_link(pages[landing], label=md("Continue to {}", spec.title), icon=spec.icon)
            return
        st.switch_page(pages[landing])

    home_page = st.Page(home, title="Home", url_path="home", default=True, visibility="hidden")
    return home_page, pages


def sidebar(actor: Actor, pages: dict[str, st.Page]) -> None:
    """Who is logged in, the pages the role may use, logout, and whether Stripe is real.

    The navigation is drawn here with page links (st.navigation itself is hidden), from the
    role's permissions; the links are plain elements, which the AppTest suite reads."""
    with st.sidebar:
        st.markdown(md("Signed in as **{}**  \nRole: **{}**", actor.username, actor.role))
        for spec in visible_pages(actor.role):
            st.page_link(pages[spec.file], label=spec.title, icon=spec.icon)  # markup: console text
        st.divider()
        # Handled by auth.authenticate() at the top of the run the click starts, so that run
        # can both end the session and delete the cookie (a rerun here would cut it short).
        st.button("Log out", key=auth.LOGOUT_KEY, icon=":material/logout:")
        if get_settings().stripe_secret_key is None:
            st.caption(
                "Stripe: offline stand-in (no STRIPE_SECRET_KEY is set). "
                "Stripe-backed figures and actions are not the real account."
            )


def main() -> None:
    st.set_page_config(
        # An emoji, not a :material/...: icon: Streamlit loads those favicons from
        # fonts.gstatic.com, and the console's pages load nothing from anywhere else.
        page_title="Payments console",
        page_icon="💳",
        layout="wide",
    )
    try:
        get_settings()
    except ConfigError as exc:
        st.error(body(str(exc)))
        st.stop()
    home, pages = register_pages()
    current = st.navigation([home, *pages.values()], position="hidden")
    actor = auth.authenticate()
    if actor is None:
        st.stop()
    sidebar(actor, pages)
    current.run()


if __name__ == "__main__":  # streamlit runs the entrypoint as __main__; tests import PAGES
    main()
