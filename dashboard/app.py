"""The dashboard's entrypoint: page config, login, then the navigation the role allows.

    streamlit run dashboard/app.py

The sidebar lists the pages the role may use. The others are registered too, but hidden:
reaching one by its URL runs the page, whose first line (`require(...)`) shows a refusal and
stops before any data is read. Permissions are checked again in core for every action.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import streamlit as st

from core.auth import permissions
from core.auth.permissions import Actor
from core.settings import ConfigError, Settings, get_settings, key_mode
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
    PageSpec("rules.py", "Risk rules", "risk.rules", ":material/tune:"),
    PageSpec("promotions.py", "Promotion codes", "promotions.view", ":material/sell:"),
    PageSpec("fulfillment.py", "Manual fulfillment", "fulfillment.request", ":material/inventory:"),
    PageSpec("operations.py", "Reconcile & replay", "events.replay", ":material/sync:"),
    PageSpec("audit_log.py", "Audit log", "audit.view", ":material/policy:"),
    PageSpec("users.py", "Users", "users.manage", ":material/group:"),
)
# Where each role lands after logging in: the first of these it may use.
LANDING = ("overview.py", "orders.py")
PRODUCT = "Payments console"
HOME_PATHS = ("", "home")


def environment_label(settings: Settings) -> str:
    """Which environment this console shows, for the login page and the sidebar: the
    deployment (APP_ENV) and what Stripe is behind it (the offline demo stand-in, another
    stand-in, or the account's test or live mode)."""
    deployment = "Production" if settings.is_production else "Development"
    if settings.stripe_secret_key is None:
        stripe = "demo data, offline Stripe stand-in"
    elif settings.stripe_api_base:
        stripe = "Stripe stand-in (STRIPE_API_BASE)"
    else:
        mode = key_mode(settings.stripe_secret_key.get_secret_value())
        stripe = {"live": "Stripe live mode", "test": "Stripe test mode"}.get(
            str(mode), "Stripe, unknown mode"
        )
    return f"{deployment} · {stripe}"


def requested_path() -> str:
    """The page path the browser asked for (the last part of the URL's path)."""
    path = urlsplit(st.context.url or "").path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


NOT_FOUND_KEY = "_not_found_path"
DISMISSED_KEY = "_not_found_dismissed"


def missing_page() -> str | None:
    """The unknown address this browser session asked for, until the user leaves it.

    Streamlit runs the home page for an address that names no page, and its frontend soon
    rewrites the address to "/", so a later run could not tell any more: the path is kept in
    the session until "Back to the console" dismisses it."""
    path = requested_path()
    if path not in HOME_PATHS and path != st.session_state.get(DISMISSED_KEY):
        st.session_state[NOT_FOUND_KEY] = path
    missing = st.session_state.get(NOT_FOUND_KEY)
    return missing if isinstance(missing, str) else None


def _dismiss() -> None:
    st.session_state[DISMISSED_KEY] = st.session_state.pop(NOT_FOUND_KEY, None)


def not_found(path: str) -> None:
    """An address that names no page: say so, and offer the way back (Streamlit alone would
    quietly show the landing page instead)."""
    st.title("Page not found")
    st.text(f"There is no page called “{path}” in the {PRODUCT}.")
    st.button("Back to the console", icon=":material/home:", on_click=_dismiss)


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
        missing = missing_page()
        if missing is not None:
            not_found(missing)
            return
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
    auth.set_home(home_page)
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
        page_title=PRODUCT,
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
    actor = auth.authenticate(PRODUCT, environment_label(get_settings()))
    if actor is None:
        st.stop()
    if auth.password_change_required(actor):
        auth.password_change_form(actor)  # a one-time password: nothing else until changed
        st.stop()
    sidebar(actor, pages)
    current.run()


if __name__ == "__main__":  # streamlit runs the entrypoint as __main__; tests import PAGES
    main()
