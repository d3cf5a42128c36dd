"""Issue 14 in a real browser (Debian's chromium through Playwright, `streamlit run`): at 1280 px
no headline figure of the Overview is cut, and the volume CSV downloaded from Payments holds
amounts a spreadsheet reads as numbers. Screenshots go to artifacts/browser/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import Browser, expect

from core.db import make_engine
from tests.conftest import SECRET
from tests.support.apptest import write_users
from tests.support.dashboard_server import streamlit_dashboard
from tests.ui.test_browser import ARTIFACTS, STEP_TIMEOUT_MS, browser, log_in, open_page, shot
from tests.ui.test_pages import Shop

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module-scoped chromium fixture

# Large volumes in four currencies: the amounts the Overview used to cut ("EUR 147,3…").
BIG = {"eur": 14_730_149, "usd": 33_691_255, "gbp": 9_876_543, "jpy": 123_456_789}

# Any element inside a metric whose text overflows its box (ellipsis or clipping).
_CUT = """
(tiles) => tiles.flatMap((tile) =>
  [tile, ...tile.querySelectorAll('*')]
    .filter((e) => e.scrollWidth > e.clientWidth + 1)
    .map((e) => e.textContent))
"""


@pytest.fixture(scope="module")
def big_shop(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("figures-browser")
    database = workdir / "payments.db"
    shutil.copyfile(sqlite_template, database)
    engine = make_engine(f"sqlite:///{database}")
    now = datetime.now(UTC)
    shop = Shop(engine, now)
    for n, (currency, amount) in enumerate(BIG.items()):
        shop.paid_order(
            now - timedelta(days=2, hours=n), email=f"big.{currency}@example.com",
            amount=amount, currency=currency, fingerprint=f"fpBig{currency}00000000",
            last4="4242",
        )  # fmt: skip
    engine.dispose()
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "AUTH_CONFIG": str(write_users(workdir / "users.yaml")),
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    with streamlit_dashboard(workdir, env) as (url, _log):
        yield url


def test_headline_figures_are_not_cut_at_1280_px(big_shop: str, browser: Browser) -> None:
    """Issue 14: the Overview cut its headline volumes at 1440 px; at 1280 px none is cut, and
    the volume CSV's amounts parse as numbers."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, big_shop, "finance")
        open_page(page, "Overview")
        tiles = page.get_by_test_id("stMetric")
        expect(tiles.filter(has_text="JPY")).to_be_visible()
        expect(tiles.filter(has_text="Open risk flags")).to_be_visible()
        page.wait_for_timeout(500)  # the columns settle their widths
        shot(page, "figures-overview-1280")
        assert tiles.count() >= 4 + 3
        cut = page.evaluate(_CUT, [tiles.nth(i).element_handle() for i in range(tiles.count())])
        assert cut == [], f"cut at 1280 px: {cut}"

        open_page(page, "Payments")
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        shot(page, "figures-payments-1280")
        with page.expect_download() as download:
            page.get_by_role("button", name="Download volumes (CSV)").click()
        saved = ARTIFACTS / "figures-volume.csv"
        download.value.save_as(saved)
        volume = pd.read_csv(saved)
        assert volume["amount"].dtype.kind == "f"
        assert dict(zip(volume["currency"], volume["amount"], strict=True)) == {
            "EUR": 147_301.49, "USD": 336_912.55, "GBP": 98_765.43, "JPY": 123_456_789,
        }  # fmt: skip
    finally:
        context.close()
