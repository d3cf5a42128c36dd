"""`streamlit run dashboard/app.py` for the browser journeys: 127.0.0.1, a free port, only the
environment given (no STRIPE_/DATABASE_/AUTH_ variable leaks in from the shell), always stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(
        f"streamlit did not answer within {STARTUP_TIMEOUT_S}s:\n{log.read_text()}"
    )


@contextmanager
def streamlit_dashboard(workdir: Path, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """Run the dashboard with `env` on top of a cleaned environment; yield (url, log file)."""
    full = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "DATABASE_", "AUTH_", "APP_ENV"))
    }
    full.update(APP_ENV="development", **env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "streamlit.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "streamlit"),
                "run",
                "dashboard/app.py",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--server.headless",
                "true",
            ],
            cwd=ROOT,
            env=full,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
