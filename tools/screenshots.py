"""Screenshots of every dashboard page, as admin, 1280 px wide, into docs/screenshots/.

    python tools/screenshots.py                      # seeds a fresh demo and serves it itself
    python tools/screenshots.py --url http://127.0.0.1:8501 --password admin-demo

Without --url it builds today's demo in a temporary directory (migrate, `python -m core demo`,
the demo users), starts the offline Stripe stand-in and `streamlit run dashboard/app.py` on
127.0.0.1, takes the pictures with Debian's chromium (/usr/bin/chromium) through Playwright, and
stops everything it started. Besides each page: the login page, and one order's timeline.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.app import PAGES  # noqa: E402 (the repository root is on the path only now)

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 900
STEP_TIMEOUT_MS = 60_000
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (our own http URL)
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"nothing answered at {url} within {timeout_s:.0f}s")


@contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, always stopped at the end."""
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 (a fixed argv, no shell)
            args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def demo_dashboard(stack: ExitStack, workdir: Path, orders: int, days: int) -> str:
    """Seed a demo database in `workdir`, start the stand-in and the dashboard; the URL."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "DATABASE_", "AUTH_", "APP_ENV"))
    }
    standin_port, dashboard_port = free_port(), free_port()
    env.update(
        APP_ENV="development",
        DATABASE_URL=f"sqlite:///{workdir / 'demo.db'}",
        AUTH_CONFIG=str(workdir / "users.yaml"),
        STRIPE_WEBHOOK_SECRETS="whsec_demo_local_only_not_a_real_secret",
        STRIPE_API_BASE=f"http://127.0.0.1:{standin_port}",
        PYTHONPATH=str(ROOT),
    )
    python = str(BIN / "python")
    for command in (
        ["migrate"],
        ["demo", "--orders", str(orders), "--days", str(days)],
        ["users", "demo"],
    ):
        subprocess.run(  # noqa: S603 (a fixed argv, no shell)
            [python, "-m", "core", *command], cwd=ROOT, env=env, check=True
        )
    standin = stack.enter_context(
        started(
            [python, "-m", "core", "standin", "--port", str(standin_port)],
            env,
            workdir / "standin.log",
        )
    )
    wait_for(f"http://127.0.0.1:{standin_port}/v1/promotion_codes", standin)
    url = f"http://127.0.0.1:{dashboard_port}"
    dashboard = stack.enter_context(
        started(
            [
                str(BIN / "streamlit"),
                "run",
                "dashboard/app.py",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(dashboard_port),
                "--server.headless",
                "true",
            ],
            env,
            workdir / "streamlit.log",
        )
    )
    wait_for(f"{url}/_stcore/health", dashboard)
    return url


def settle(page: Page) -> None:
    """Wait until Streamlit has finished running the page (no spinner, no stale elements)."""
    page.wait_for_load_state("networkidle")
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=STEP_TIMEOUT_MS)
    page.wait_for_timeout(1500)  # charts draw after the run ends


def shoot(page: Page, out: Path, name: str) -> None:
    settle(page)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"  {out / name}.png")


def take(url: str, out: Path, username: str, password: str) -> None:
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(url)
        # The first run of a fresh server imports everything: give it longer than a step.
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=180_000)
        shoot(page, out, "login")
        page.get_by_role("textbox", name="Username").fill(username)
        page.get_by_role("textbox", name="Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {username}")
        # The landing page's title: the switch to it waits for the login cookie, and a click
        # before it could be overtaken by that switch.
        expect(page.get_by_role("heading", level=1).first).to_be_visible()
        expect(page.get_by_test_id("stSidebar").get_by_test_id("stPageLink").first).to_be_visible()
        settle(page)
        for spec in PAGES:
            link = page.get_by_test_id("stSidebar").get_by_role("link", name=spec.title, exact=True)
            if not link.count():
                continue  # a page this user's role may not use
            link.click()
            expect(page.get_by_role("heading", name=spec.title, level=1)).to_be_visible()
            shoot(page, out, spec.file.removesuffix(".py"))
            if spec.file == "orders.py":
                search = page.get_by_role("textbox", name="Search orders")
                search.fill("#1")
                search.press("Enter")
                expect(page.get_by_role("heading", name="Order #1", level=2)).to_be_visible()
                shoot(page, out, "orders-order")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running dashboard (default: seed and serve a demo)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default="admin-demo")
    parser.add_argument("--orders", type=int, default=3000, help="demo orders to simulate")
    parser.add_argument("--days", type=int, default=30, help="days of demo activity")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url
        if url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = demo_dashboard(stack, workdir, args.orders, args.days)
        print(f"screenshots of {url} into {args.out}")
        try:
            take(url, args.out, args.username, args.password)
        except Exception:
            if args.url is None:
                print((workdir / "streamlit.log").read_text()[-3000:], file=sys.stderr)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
