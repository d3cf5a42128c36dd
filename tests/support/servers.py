"""Real servers for tests, each on 127.0.0.1 on a free port, always stopped on exit.

    with run_receiver({"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRETS": SECRET}) as receiver:
        httpx.post(receiver.url + "/webhooks/stripe", ...)

    with run_localstripe() as fake_stripe:
        httpx.post(fake_stripe.url + "/v1/customers", auth=("sk_test_12345", ""), ...)
        stripe.StripeClient("sk_test_x", base_addresses={"api": fake_stripe.url})

Both run in a subprocess of the test's interpreter with a minimal environment (PATH, HOME and
what you pass), from the current directory (the test's tmp dir: no stray `.env` is read).
Their output goes to a log file whose tail is put into the error when a server fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.postgres import free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Running:
    """A started server: its base URL (no trailing slash), process and log file."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def base_env(env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: only what a server needs plus `env` (nothing inherited that a
    test did not choose, e.g. no DATABASE_URL or secret of the developer's shell)."""
    # PYTHONPATH too: the servers must run the code under test (a worktree's), not whatever
    # copy the virtualenv's editable install points at.
    names = ("PATH", "HOME", "LANG", "TZ", "PYTHONPATH")
    keep = {name: os.environ[name] for name in names if name in os.environ}
    return {**keep, "PYTHONUNBUFFERED": "1", **env}


@contextmanager
def _serve(
    argv: list[str], env: Mapping[str, str], port: int, ready_path: str, name: str
) -> Iterator[Running]:
    log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, env=base_env(env), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = Running(f"http://{HOST}:{port}", port, process, log)
    try:
        _wait_ready(running, ready_path, name)
        yield running
    finally:
        _stop(process)
        log.unlink(missing_ok=True)


def _wait_ready(running: Running, path: str, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {running.process.returncode} during start-up:\n"
                + running.output()[-2000:]
            )
        try:
            httpx.get(running.url + path, timeout=1.0)
            return  # any answer: the server is up (its status is the test's business)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} not ready after {START_TIMEOUT_S} s:\n" + running.output()[-2000:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it runs in its own session), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()
    else:
        process.wait()


@contextmanager
def run_receiver(
    env: Mapping[str, str], *, workers: int = 1, args: Sequence[str] = ()
) -> Iterator[Running]:
    """The real receiver as production starts it (`python -m receiver`: uvicorn with the edge's
    limits) with `env` (DATABASE_URL, STRIPE_WEBHOOK_SECRETS, ...) and more uvicorn options
    `args`, ready once `GET /healthz` answers at all (200, or 503 when the database is down on
    purpose). Stopped on exit, whatever happened."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "receiver",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        *args,
    ]
    with _serve(argv, env, port, "/healthz", "receiver") as running:
        yield running


# localstripe's stock command binds every interface and pickles its store to a shared
# /tmp/localstripe.pickle on each POST; this runs its app on loopback with no disk state.
_LOCALSTRIPE = """
import sys
import aiohttp.web
from localstripe import resources
from localstripe.server import app
resources.Store.dump_to_disk = lambda self: None
aiohttp.web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@contextmanager
def run_localstripe(env: Mapping[str, str] | None = None) -> Iterator[Running]:
    """localstripe (a stateful fake Stripe API that also sends signed webhooks) on 127.0.0.1,
    empty at start. Configure a webhook with
    `POST {url}/_config/webhooks/{id}` data={"url": ..., "secret": ...}."""
    port = free_port()
    argv = [sys.executable, "-c", _LOCALSTRIPE, str(port)]
    with _serve(argv, env or {}, port, "/js.stripe.com/v3/", "localstripe") as running:
        yield running
