"""The real receiver under uvicorn, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from core.db import make_engine
from core.models import Fulfillment, Order, StripeEvent, WebhookDelivery
from core.webhook.signature import MAX_BODY_BYTES
from tests.conftest import SECRET
from tests.support import stripe_objects as so
from tests.support.postgres import PostgresServer, free_port
from tests.support.servers import Running, base_env, run_receiver

TRACEBACK_MARKERS = ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3")


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": db_url, "STRIPE_WEBHOOK_SECRETS": SECRET, **extra}


def post_event(
    client: httpx.Client, base: str, evt: dict[str, Any], secret: str = SECRET
) -> httpx.Response:
    body, header = so.signed(evt, secret)
    return client.post(
        base + "/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def assert_no_traceback(response: httpx.Response) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in response.text, response.text


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def receiver(db_url: str) -> Iterator[Running]:
    with run_receiver(env_for(db_url)) as running:
        yield running


def test_fifty_concurrent_deliveries_of_one_new_event(receiver: Running, db_url: str) -> None:
    evt = so.event("checkout.session.completed", so.checkout_session())
    body, header = so.signed(evt, SECRET)
    clients = 50
    barrier = threading.Barrier(clients)
    answers: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        try:
            with httpx.Client(timeout=60) as client:
                client.get(receiver.url + "/healthz")  # connect before the race
                barrier.wait(timeout=60)
                response = client.post(
                    receiver.url + "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": header},
                )
            with lock:
                answers.append((response.status_code, response.json()["result"]))
        except BaseException as exc:  # reported below, with the thread's own error
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(answers) == clients
    assert all(status == 200 for status, _ in answers), answers
    results = sorted(result for _, result in answers)
    assert results.count("processed") == 1
    assert results.count("duplicate") == clients - 1

    engine = make_engine(db_url)
    try:
        assert count(engine, StripeEvent) == 1
        assert count(engine, Order) == 1
        assert count(engine, Fulfillment) == 1
        assert count(engine, WebhookDelivery) == clients
        with engine.connect() as conn:
            status, deliveries = conn.execute(
                select(StripeEvent.status, StripeEvent.deliveries)
            ).one()
        assert (status, deliveries) == ("processed", clients)
    finally:
        engine.dispose()


def test_http_surface(sqlite_url: str) -> None:
    """Methods, size cap, metrics and error bodies of one running receiver."""
    with run_receiver(env_for(sqlite_url)) as running, httpx.Client(timeout=30) as client:
        base = running.url
        health = client.get(base + "/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok", "database": "ok"})

        for method in ("GET", "PUT", "DELETE", "PATCH"):
            assert client.request(method, base + "/webhooks/stripe").status_code == 405
        assert client.post(base + "/healthz").status_code == 405

        # Over the cap: refused by its declared length, and when streamed without one.
        evt = so.event("checkout.session.completed", so.checkout_session())
        evt["data"]["object"]["metadata"] = {"pad": "x" * MAX_BODY_BYTES}
        body, header = so.signed(evt, SECRET)
        big = client.post(
            base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
        )
        assert (big.status_code, big.json()) == (
            413,
            {"result": "rejected", "reason": "body_too_large"},
        )
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        streamed = client.post(
            base + "/webhooks/stripe", content=chunks, headers={"Stripe-Signature": header}
        )
        assert streamed.status_code == 413
        assert "content-length" not in streamed.request.headers

        ok = post_event(client, base, so.event("checkout.session.completed", so.checkout_session()))
        assert (ok.status_code, ok.json()["result"]) == (200, "processed")
        ignored = post_event(client, base, so.event("customer.created", so.example("customer")))
        assert (ignored.status_code, ignored.json()["result"]) == (200, "ignored")
        forged = post_event(
            client, base, so.event("checkout.session.completed", so.checkout_session()), "whsec_x"
        )
        assert forged.status_code == 400
        assert forged.json() == {"result": "rejected", "reason": "no_matching_signature"}
        missing = client.post(base + "/webhooks/stripe", content=b"{}")
        assert missing.json()["reason"] == "missing_header"

        # A signed event that can never be applied (a session without an id) is stored as
        # unprocessable and answered 200, so Stripe does not retry it forever (issue 11).
        broken = so.event("checkout.session.completed", so.checkout_session())
        del broken["data"]["object"]["id"]
        failed = post_event(client, base, broken)
        assert failed.status_code == 200
        assert failed.json() == {
            "result": "unprocessable",
            "reason": "unprocessable_event",
            "event_id": broken["id"],
        }
        for response in (big, streamed, ok, ignored, forged, missing, failed):
            assert_no_traceback(response)
            assert response.headers["content-type"] == "application/json"

        metrics = client.get(base + "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        lines = metrics.text.splitlines()
        for expected in (
            'webhook_deliveries_total{outcome="processed",reason=""} 1.0',
            'webhook_deliveries_total{outcome="ignored",reason=""} 1.0',
            'webhook_deliveries_total{outcome="rejected",reason="body_too_large"} 2.0',
            'webhook_deliveries_total{outcome="rejected",reason="no_matching_signature"} 1.0',
            'webhook_deliveries_total{outcome="rejected",reason="missing_header"} 1.0',
            'webhook_deliveries_total{outcome="unprocessable",reason="unprocessable_event"} 1.0',
            'webhook_processing_seconds_count{outcome="processed"} 1.0',
        ):
            assert expected in lines, metrics.text
        assert any(
            line.startswith('webhook_processing_seconds_bucket{le="0.01",outcome="processed"}')
            for line in lines
        ), metrics.text

    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(WebhookDelivery.http_status, WebhookDelivery.outcome).order_by(
                    WebhookDelivery.id
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            (413, "rejected"),
            (413, "rejected"),
            (200, "processed"),
            (200, "ignored"),
            (400, "rejected"),
            (400, "rejected"),
            (200, "unprocessable"),
        ]
    finally:
        engine.dispose()


# --- The database unavailable ----------------------------------------------------------------


def closed_port_pg_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/payments"


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda tmp: closed_port_pg_url(), id="postgres-closed-port"),
        # A directory where the database file should be: SQLite cannot open it.
        pytest.param(lambda tmp: f"sqlite:///{tmp}", id="sqlite-unopenable"),
    ],
)
def test_database_unavailable_gives_5xx(make_url: Any, tmp_path: Path) -> None:
    url = make_url(tmp_path / "a-directory")
    (tmp_path / "a-directory").mkdir()
    with run_receiver(env_for(url)) as running, httpx.Client(timeout=30) as client:
        health = client.get(running.url + "/healthz")
        assert (health.status_code, health.json()) == (
            503,
            {"status": "unhealthy", "database": "unavailable"},
        )
        evt = so.event("checkout.session.completed", so.checkout_session())
        response = post_event(client, running.url, evt)
        assert response.status_code == 503
        assert response.json() == {
            "result": "error",
            "reason": "database_unavailable",
            "event_id": evt["id"],
        }
        # A forgery is still refused for what it is, even when it cannot be recorded.
        forged = post_event(client, running.url, evt, "whsec_forged")
        assert (forged.status_code, forged.json()["reason"]) == (400, "no_matching_signature")
        # Monitoring keeps working when the database does not.
        metrics = client.get(running.url + "/metrics")
        assert metrics.status_code == 200
        assert 'webhook_deliveries_total{outcome="error",reason="database_unavailable"} 1.0' in (
            metrics.text.splitlines()
        )
        for answer in (health, response, forged):
            assert_no_traceback(answer)
        assert SECRET not in running.output()


@pytest.mark.postgres
def test_database_that_comes_back_gets_everything_once(
    pg_server: PostgresServer, pg_template: str
) -> None:
    """A database missing at first: deliveries fail with 5xx and write nothing; once it exists,
    the redelivery applies the event exactly once."""
    name = "payments_comes_back"
    url = pg_server.url(name)
    evt = so.event("checkout.session.completed", so.checkout_session())
    admin = make_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    try:
        with run_receiver(env_for(url)) as running, httpx.Client(timeout=30) as client:
            first = post_event(client, running.url, evt)
            assert 500 <= first.status_code < 600
            assert_no_traceback(first)
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
            assert client.get(running.url + "/healthz").status_code == 200
            again = post_event(client, running.url, evt)
            assert (again.status_code, again.json()["result"]) == (200, "processed")
            once_more = post_event(client, running.url, evt)
            assert (once_more.status_code, once_more.json()["result"]) == (200, "duplicate")
        engine = make_engine(url)
        try:
            assert count(engine, StripeEvent) == count(engine, Fulfillment) == 1
            assert count(engine, WebhookDelivery) == 2  # the failed one could not be recorded
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- Refusing to start -----------------------------------------------------------------------


PLACEHOLDER_SECRET = "whsec_..."
SHORT_COOKIE = "cookie-short-and-secret-7f3a"


@pytest.mark.parametrize(
    ("env", "names", "secrets"),
    [
        pytest.param({}, ["STRIPE_WEBHOOK_SECRETS"], [], id="no-secret"),
        pytest.param(
            {"STRIPE_WEBHOOK_SECRETS": " , "}, ["STRIPE_WEBHOOK_SECRETS"], [], id="blank-secret"
        ),
        pytest.param(
            {"STRIPE_WEBHOOK_SECRETS": SECRET, "STRIPE_WEBHOOK_TOLERANCE": "0"},
            ["STRIPE_WEBHOOK_TOLERANCE"],
            [SECRET],
            id="tolerance-0",
        ),
        pytest.param(
            {
                "APP_ENV": "production",
                "STRIPE_WEBHOOK_SECRETS": PLACEHOLDER_SECRET,
                "COOKIE_KEY": SHORT_COOKIE,
            },
            ["STRIPE_WEBHOOK_SECRETS", "COOKIE_KEY"],
            [PLACEHOLDER_SECRET, SHORT_COOKIE],
            id="production-placeholders",
        ),
    ],
)
def test_receiver_refuses_to_start(
    env: dict[str, str], names: list[str], secrets: list[str], tmp_path: Path
) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "receiver.app:app", "--port", str(port)],
        env=base_env({"DATABASE_URL": f"sqlite:///{tmp_path}/p.db", **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    for name in names:
        assert name in output
    for secret in secrets:
        assert secret not in output
    assert "Refusing to start" in output
    assert "Traceback" not in output, output
