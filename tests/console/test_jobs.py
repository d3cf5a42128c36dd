"""The reconciliation lock (issue 13, finding 5): one run at a time for every session and
process, a repeated request does nothing, a dead run's lock goes stale, progress is recorded."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from core.auth.permissions import Actor
from core.cli import reconcile as cli
from core.console import jobs
from core.console.reconcile import JOB, ReconcileBusy, run_once, start
from core.console.stripe_api import StripeApi
from core.db import session_scope
from core.models import AuditEntry, utcnow
from core.webhook.handlers import Context
from tests.support.stripe_standin import FakeStripe

ADMIN = Actor("alice", "admin")
OTHER = Actor("bob", "admin")


def reconciliations(engine: Engine) -> int:
    with session_scope(engine, write=False) as session:
        return session.execute(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "events.reconcile")
        ).scalar_one()


def test_the_same_request_runs_once(sqlite_engine: Engine, fake: FakeStripe) -> None:
    """Finding 5: a second click started a second full reconciliation beside the first."""
    client = StripeApi("sk_test_x", api_base=fake.url)
    steps: list[str] = []
    first = run_once(
        sqlite_engine, client, Context(), ADMIN, "tok1", days=3,
        progress=lambda step, done, total: steps.append(step),
    )  # fmt: skip
    again = run_once(sqlite_engine, client, Context(), ADMIN, "tok1", days=3)
    assert first is not None and again is None
    assert reconciliations(sqlite_engine) == 1
    assert "listing Stripe's events" in steps and "listing paid Checkout Sessions" in steps
    state = jobs.state(sqlite_engine, JOB)
    assert state is not None and state.status == "done" and state.started_by == "alice"
    assert "nothing to do: our tables agree with Stripe" in state.result


def test_a_running_job_refuses_everyone_else_until_stale(engine: Engine) -> None:
    """On both databases: the conditional UPDATE is the lock."""
    assert start(engine, ADMIN, "tok1", days=30) == "started"
    assert start(engine, ADMIN, "tok1", days=30) == "already"
    with pytest.raises(ReconcileBusy, match="already running \\(started by alice at"):
        start(engine, OTHER, "tok2", days=30)
    jobs.progress(engine, JOB, "tok1", "applying missing events", 3, 4)
    state = jobs.state(engine, JOB)
    assert state is not None and (state.step, state.done, state.total) == (
        "applying missing events", 3, 4
    )  # fmt: skip
    later = utcnow() + jobs.STALE_AFTER + timedelta(seconds=1)
    claimed, state = jobs.claim(engine, JOB, "bob", "tok2", now=later)
    assert claimed == "started" and state.started_by == "bob"  # the dead run's lock is stale
    jobs.progress(engine, JOB, "tok1", "late news from the dead run", 9, 9)
    state = jobs.state(engine, JOB)
    assert state is not None and state.step == "starting"  # the old run no longer writes
    jobs.finish(engine, JOB, "tok2", ok=True, result=["done"])
    assert start(engine, ADMIN, "tok3", days=30) == "started"


def test_the_cli_takes_the_same_lock(
    sqlite_engine: Engine, sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from core.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:9")
    get_settings.cache_clear()
    assert start(sqlite_engine, ADMIN, "tok1", days=30) == "started"
    assert cli.run(argparse.Namespace(days=30)) == 3
    assert "already running (started by alice" in capsys.readouterr().err
    assert reconciliations(sqlite_engine) == 0


def test_racing_claims_start_one_run(engine: Engine) -> None:
    """Two sessions clicking at the same moment: exactly one run starts."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(
            pool.map(lambda n: jobs.claim(engine, JOB, f"user{n}", f"tok{n}")[0], range(8))
        )
    assert sorted(outcomes) == ["busy"] * 7 + ["started"]
