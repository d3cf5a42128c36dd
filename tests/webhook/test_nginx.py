"""deploy/nginx/receiver.conf for real: nginx on 127.0.0.1 (a temporary prefix) in front of a
running receiver. A signed delivery passes; oversized headers, slow clients, too many
connections from one address and /metrics or /healthz on the public listener are refused;
the internal listener serves /healthz and /metrics."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import free_port
from tests.support.servers import HOST, Running, run_receiver
from tests.webhook.test_edge import answer, closed_by_server, deliver, env_for, new_event

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "receiver.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


def _swap(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of `old`: the test breaks if the file stops having it."""
    assert text.count(old) == 1, f"{old!r} is not in {CONF.name} exactly once"
    return text.replace(old, new)


@contextmanager
def nginx_in_front(receiver: Running, prefix: Path) -> Iterator[tuple[str, str]]:
    """The shipped config with loopback listeners, no TLS, the receiver as upstream and a
    1 s header timeout; yields the public and the internal base URL."""
    public, internal = free_port(), free_port()
    conf = CONF.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen {HOST}:{public};"),
        ("    ssl_certificate /etc/ssl/payments/fullchain.pem;\n", ""),
        ("    ssl_certificate_key /etc/ssl/payments/privkey.pem;\n", ""),
        ("listen 10.0.0.10:9100;", f"listen {HOST}:{internal};"),
        ("allow 10.0.0.0/8;", f"allow {HOST};"),
        ("server 127.0.0.1:8000;", f"server {HOST}:{receiver.port};"),
        ("client_header_timeout 10s;", "client_header_timeout 1s;"),
    ):
        conf = _swap(conf, old, new)
    (prefix / "logs").mkdir()
    (prefix / "receiver.conf").write_text(conf)
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/logs/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n"
        f"  proxy_temp_path {prefix}/proxy;\n  include {prefix}/receiver.conf;\n}}\n"
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                socket.create_connection((HOST, public), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield f"http://{HOST}:{public}", f"http://{HOST}:{internal}"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_nginx_config_in_front_of_the_receiver(sqlite_url: str, tmp_path: Path) -> None:
    with (
        run_receiver(env_for(sqlite_url)) as receiver,
        nginx_in_front(receiver, tmp_path) as (public, internal),
    ):
        ok = deliver(public, new_event())
        assert (ok.status_code, ok.json()["result"]) == (200, "processed")

        # Monitoring only on the internal listener.
        for path in ("/metrics", "/healthz"):
            assert httpx.get(public + path).status_code == 404
            assert httpx.get(internal + path).status_code == 200
        assert httpx.get(public + "/webhooks/stripe").status_code == 403

        port = int(public.rsplit(":", 1)[1])
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (
                b"p" * 20000
            ))  # fmt: skip
            assert answer(sock).split(b" ", 2)[1] == b"400"

        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
            assert closed_by_server(sock, within=3)

        # More than 20 requests in progress from one address: the rest are refused at once.
        with ExitStack() as stack:
            statuses = []
            socks = [
                stack.enter_context(socket.create_connection((HOST, port), timeout=5))
                for _ in range(30)
            ]
            for sock in socks:
                sock.sendall(
                    b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"
                )
            for sock in socks:
                sock.settimeout(0.5)
                try:
                    statuses.append(sock.recv(100).split(b" ", 2)[1])
                except TimeoutError:
                    statuses.append(b"waiting")
                except ConnectionResetError:  # refused with its body unread: also at once
                    statuses.append(b"reset")
            assert statuses.count(b"waiting") <= 20, statuses
            assert b"503" in statuses, statuses
        ok = deliver(public, new_event())
        assert ok.status_code == 200
