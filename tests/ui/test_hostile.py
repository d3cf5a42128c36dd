"""Issue 12 (part A): a hostile corpus delivered as signed events and typed by staff, then every
page drawn for every role through the entrypoint (AppTest), with assertions on what was sent to
the browser: no markdown link, image, HTML or heading made of data, no autolink, no colour
directive, no bidirectional or zero-width character, no HTML in chart labels or hover text.

Markdown is judged the way a browser would get it: every string Streamlit renders as markdown
(bodies, labels, metric values, help) is parsed with markdown-it (CommonMark, tables,
strikethrough), and the GFM autolink literals and Streamlit's directives are looked for in it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.auth.permissions import ROLES, allowed
from core.db import make_engine, session_scope
from core.models import Order
from core.runtime import webhook_context
from core.settings import load_settings
from core.webhook.receive import receive
from dashboard.app import PAGES
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.apptest import app_as, refused, reset_caches
from tests.support.stripe_standin import demo_standin

EVIL = "evil.example"
# Each line a way data has been, or could be, read as markup.
CUSTOMER = f"cus_`![c](http://{EVIL}/customer.png)`"  # finding 1, as reported
EMAIL = f"\u202emoc.elpmaxe@ylloM\u202c\n===\nwww.{EVIL}@example.com"  # bidi, setext, autolink
DECLINE = f'<a href="http://{EVIL}/pay">pay here</a>'  # finding 3
FORMULAS = ('=HYPERLINK("http://evil.example","pay")', "+1+1", "-2+3", "@SUM(A1:A9)")  # finding 4
NOTE = (  # finding 2: a finance note, read by an admin
    f"![n](http://{EVIL}/note.png) [link](http://{EVIL}/x) :red[RED] <b>bold</b> "
    f"http://{EVIL}/bare zero\u200bwidth " + "long " * 300
)
BIDI_AND_ZERO_WIDTH = ("\u202e", "\u202c", "\u200b", "\u2066", "\u200f")
ALLOWED_TOKENS = {
    "paragraph_open", "paragraph_close", "inline", "text", "strong_open", "strong_close",
    "em_open", "em_close", "code_inline", "softbreak", "hardbreak",
}  # fmt: skip
_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
# GFM autolink literals and Streamlit's own syntax, unescaped (CommonMark leaves them as text).
_LITERALS = re.compile(
    r"(?i)(?<!\\)https?://|(?<![\\\w])www\.|[\w.+-]@[\w-]+\.\w|(?<!\\):red\[|(?<!\\)\$"
)

_CODE_SPAN = re.compile(r"(?<!\\)(`+)(?!`).*?(?<!`)\1(?!`)")


def markup_in(source: str) -> list[str]:
    """What in `source` a browser would get as markup rather than text."""
    found = []
    for token in _MD.parse(source):
        for node in [token, *(token.children or [])]:
            if node.type not in ALLOWED_TOKENS:
                found.append(node.type)
    outside_code = _CODE_SPAN.sub("", source)  # inside a code span nothing is a link
    found += _LITERALS.findall(outside_code)
    return found


def test_markup_in_sees_what_the_findings_reported() -> None:
    """The judge itself: the strings the review found are markup to it; text is not."""
    assert "image" in markup_in(f"Customer `{CUSTOMER}`")
    assert "heading_open" in markup_in("x\n===")
    assert markup_in(f"see http://{EVIL}") and markup_in(f"www.{EVIL}")
    assert "html_inline" in markup_in(DECLINE)
    assert markup_in(":red[x]")
    assert not markup_in("**Customer** `cus_123` · USD 25.00: paid")


# --- The hostile shop -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    url: str
    order_id: int


def build_hostile(engine: Engine) -> int:
    """A paid order whose customer id and email are hostile, four declines whose code is HTML
    (raising risk flags on the webhook path), and declines whose codes are formulas."""
    ctx = webhook_context(load_settings())

    def deliver(event_type: str, obj: dict[str, Any]) -> None:
        body, header = so.signed(so.event(event_type, obj), SECRET)
        assert receive(engine, body, header, secrets=[SECRET], tolerance=300, ctx=ctx).status == 200

    pi = so.unique("pi")
    cs = so.unique("cs_test")
    for i in range(4):
        deliver(
            "charge.failed",
            so.charge(
                payment_intent=pi,
                succeeded=False,
                decline_code=DECLINE,
                fingerprint=f"fpHOSTILE{i % 3}",
                last4=f"000{i}",
                email=EMAIL,
                client_ip="192.0.2.66",
            ),
        )
    for code in FORMULAS:
        deliver("charge.failed", so.charge(succeeded=False, decline_code=code))
    deliver("charge.succeeded", so.charge(payment_intent=pi, email=EMAIL))
    deliver(
        "checkout.session.completed",
        so.checkout_session(session_id=cs, payment_intent=pi, email=EMAIL, customer=CUSTOMER),
    )
    with session_scope(engine, write=False) as session:
        return session.execute(select(Order.id).where(Order.checkout_session_id == cs)).scalar_one()


@pytest.fixture(scope="module")
def hostile_template(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("hostile") / "hostile.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    order_id = build_hostile(engine)
    engine.dispose()
    return path, order_id


@pytest.fixture
def hostile(
    hostile_template: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Hostile]:
    """A private copy of the hostile shop, with the offline Stripe stand-in serving it."""
    template, order_id = hostile_template
    path = tmp_path / "hostile.db"
    shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    with demo_standin(url) as api:
        monkeypatch.setenv("STRIPE_API_BASE", api)
        yield Hostile(url, order_id)
    reset_caches()


# --- Reading what the app sent --------------------------------------------------------------------

# Elements whose text Streamlit shows as it is (not markdown).
PLAIN_ELEMENTS = {"text", "code", "json", "exception"}
DIVIDER = "---"  # st.divider() is this markdown


def _nodes(node: Any) -> Iterator[Any]:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def markdown_sources(at: AppTest) -> list[str]:
    """Every string the app sent that Streamlit renders as markdown."""
    sources = []
    for root in (at.main, at.sidebar):
        for node in _nodes(root):
            proto = getattr(node, "proto", None)
            if proto is None or getattr(node, "type", "") in PLAIN_ELEMENTS:
                continue
            for field in ("body", "label", "help", "delta"):
                value = getattr(proto, field, None)
                if isinstance(value, str) and value and value != DIVIDER:
                    sources.append(value)
    return sources


def everything(at: AppTest) -> str:
    return "\n".join(str(node.proto) for root in (at.main, at.sidebar) for node in _nodes(root)
                     if getattr(node, "proto", None) is not None)  # fmt: skip


def assert_inert(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {at.exception}"
    problems = {source[:120]: markup_in(source) for source in markdown_sources(at)}
    problems = {source: found for source, found in problems.items() if found}
    assert not problems, f"{where}: data read as markup: {problems}"
    sent = everything(at)
    for char in BIDI_AND_ZERO_WIDTH:
        assert char not in sent, f"{where}: U+{ord(char):04X} sent as it is"
        # Arrow table bytes appear octal-escaped in the proto's text.
        octal = "".join(f"\\{byte:03o}" for byte in char.encode())
        assert octal not in sent, f"{where}: U+{ord(char):04X} sent in a table"
    for chart in at.main.get("plotly_chart"):
        spec = str(chart.proto.spec)
        assert "<a " not in spec and "<img" not in spec and "<b>" not in spec, where


# --- Every page x every role ----------------------------------------------------------------------

PAGE_ROLES = [(role, spec.file) for role in ROLES for spec in PAGES]


@pytest.mark.parametrize(("role", "page"), PAGE_ROLES)
def test_every_page_shows_hostile_data_as_text(hostile: Hostile, role: str, page: str) -> None:
    """[A] one rule for output, on every page for every role; finding 1 (Orders) and 3
    (decline codes on the Payments chart and the Risk timeline) included."""
    at = app_as(role, hostile.url, page=f"pages/{page}")
    spec = next(s for s in PAGES if s.file == page)
    if not allowed(role, spec.permission):
        assert refused(at)
        return
    if page == "orders.py":
        at.query_params["order"] = str(hostile.order_id)
        at.run()
        assert at.main.metric, "the hostile order did not open"
    if page == "risk.py":
        assert at.selectbox(key="risk_incident").options, "no incident to show"
    assert_inert(at, f"{page} as {role}")


def test_the_orders_page_draws_the_crafted_customer_id_as_text(hostile: Hostile) -> None:
    """Finding 1: the customer id inside backticks became an image every browser loaded."""
    at = app_as("support", hostile.url, page="pages/orders.py")
    at.query_params["order"] = str(hostile.order_id)
    at.run()
    # The order's header draws ids and emails with st.text: text by construction.
    header = next(str(m.value) for m in at.main.text if "Customer email" in str(m.value))
    assert "[U+202E]" in header  # the override is shown, not applied
    assert "\u202e" not in header
    assert CUSTOMER in header  # whole and exactly
    assert_inert(at, "orders")


def test_a_review_note_is_shown_as_text_to_the_admin(hostile: Hostile) -> None:
    """Finding 2: a finance note rendered as markdown for the admin (image, link, red text)."""
    finance = app_as("finance", hostile.url, page="pages/risk.py")
    next(a for a in finance.text_area if str(a.key).startswith("risk_note_")).input(NOTE)
    next(b for b in finance.button if b.label == "Dismiss").click().run()
    assert not finance.exception, finance.exception
    assert any("The review is in the audit log." in str(m.value) for m in finance.main.success)
    admin = app_as("admin", hostile.url, page="pages/risk.py")
    admin.segmented_control(key="risk_status").set_value("Dismissed").run()
    assert_inert(admin, "risk (dismissed) as admin")
    assert NOTE.replace("\u200b", "[U+200B]").strip() in [t.value for t in admin.main.text]


def test_the_decline_code_is_no_link_on_the_payments_chart(hostile: Hostile) -> None:
    """Finding 3: an HTML link in a decline code became a clickable label on the chart."""
    at = app_as("finance", hostile.url, page="pages/payments.py")
    specs = " ".join(str(chart.proto.spec) for chart in at.main.get("plotly_chart"))
    assert "&lt;a href=" in specs
    assert '<a href="http' not in specs
    assert_inert(at, "payments")


@pytest.mark.parametrize(
    ("linked", "message"),
    [
        ("²", "is not an order id"),
        ("99999999999999999999", "is not an order id"),
        ("-1", "is not an order id"),
        ("0", "is not an order id"),
    ],
)
def test_a_bad_order_link_says_what_is_wrong(hostile: Hostile, linked: str, message: str) -> None:
    """Finding 7: `?order=²` and `?order=99999999999999999999` raised on the Orders page."""
    at = app_as("support", hostile.url, page="pages/orders.py")
    at.query_params["order"] = linked
    at.run()
    assert not at.exception, at.exception
    assert any(message in w.value for w in at.main.warning)
    assert not at.main.metric


@pytest.mark.parametrize("query", ["jenny\U0010ffff", "a" * 300, "x\u202e"])
def test_a_bad_search_says_what_is_wrong(hostile: Hostile, query: str) -> None:
    """Finding 7: a search ending in U+10FFFF raised on the Orders page."""
    at = app_as("support", hostile.url, page="pages/orders.py")
    at.text_input(key="orders_query").input(query).run()
    assert not at.exception, at.exception
    assert any("search" in w.value for w in at.main.warning)
    assert not at.main.dataframe
