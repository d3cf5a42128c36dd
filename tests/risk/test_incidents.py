"""Incidents (issue 14): flags that share attempts form one incident, whatever the order and
duplication of deliveries; the webhook path (incremental) and `python -m core bursts` (batch)
store the same incidents as a reference computation over the same attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select, update

from core.auth.permissions import Actor
from core.db import session_scope
from core.models import AuditEntry, PaymentAttempt, RiskFlag, RiskIncident
from core.risk import batch, detector, hook, reviews
from core.risk.detector import Attempt, Rules
from core.webhook.handlers import Context, record_attempt
from tests.risk.test_bursts import streams
from tests.risk.test_risk import _values

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RULES = Rules(threshold=3, window=timedelta(minutes=60), card_testing_threshold=3)
Partition = set[frozenset[tuple[Any, ...]]]


def reference(attempts: list[Attempt], rules: Rules) -> Partition:
    """Incidents by definition: the flags of `detector.detect`, grouped by shared attempt ids."""
    flags = {f.key: f.attempt_ids for f in detector.detect(attempts, rules)}
    return {frozenset(group) for group in detector.components(flags)}


def stored(engine: Engine) -> Partition:
    with session_scope(engine, write=False) as session:
        rows = session.execute(select(RiskFlag)).scalars().all()
        groups: dict[int | None, set[tuple[Any, ...]]] = {}
        for r in rows:
            key = (
                r.entity_kind,
                r.entity_value,
                r.pattern,
                r.window_start,
                r.window_end,
                r.failures,
                r.distinct_cards,
            )
            groups.setdefault(r.incident_id, set()).add(key)
        assert None not in groups, "every flag belongs to an incident"
        incidents = session.execute(select(RiskIncident)).scalars().all()
        assert sorted(i.id for i in incidents) == sorted(g for g in groups if g is not None)
        for incident in incidents:
            assert incident.flags == len(groups[incident.id])
    return {frozenset(g) for g in groups.values()}


def stream_in(engine: Engine, stream: list[Attempt], rules: Rules) -> None:
    ctx = Context(on_attempt=(hook.attempt_hook(rules),))
    with session_scope(engine) as session:
        for table in (RiskFlag, RiskIncident, PaymentAttempt):
            session.execute(delete(table))
    for n, a in enumerate(stream):
        with session_scope(engine) as session:
            record_attempt(session, _values(a), {"id": f"evt_{n}", "type": "charge.failed"}, ctx)


def rebuild(engine: Engine, rules: Rules) -> None:
    """Batch from nothing: forget flags and incidents, detect over every attempt."""
    with session_scope(engine) as session:
        session.execute(delete(RiskFlag))
        session.execute(delete(RiskIncident))
    with session_scope(engine) as session:
        batch.detect_period(session, rules)


def test_components_follow_shared_attempts_transitively() -> None:
    groups = detector.components({3: ["a", "b"], 1: ["c"], 2: ["b", "c"], 4: ["z"], 5: []})
    assert groups == [[1, 2, 3], [4], [5]]


@st.composite
def attacks(draw: st.DrawFn) -> tuple[int, list[Attempt], list[Attempt]]:
    """(number of attacks, attempts, a stream delivering them in any order, some twice). Each
    attack: one IP, email and customer trying 3 to 6 cards within minutes; attacks use their own
    entities (or none of a kind) and may overlap in time."""
    count = draw(st.integers(1, 4))
    attempts: list[Attempt] = []
    for n in range(count):
        start = draw(st.integers(0, 300))
        for i in range(draw(st.integers(3, 6))):
            attempts.append(
                Attempt(
                    f"ch_{n}_{i}",
                    T0 + timedelta(minutes=start + draw(st.integers(0, 20))),
                    card_fingerprint=f"fp_{n}_{draw(st.integers(0, 5))}",
                    customer_id=draw(st.sampled_from([None, f"cus_{n}"])),
                    email=f"attacker{n}@example.com",
                    ip_address=draw(st.sampled_from([None, f"203.0.113.{n}"])),
                )
            )
    duplicates = draw(st.lists(st.sampled_from(attempts), max_size=5))
    stream = draw(st.permutations(attempts + duplicates))
    return count, attempts, stream


SLOW = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SLOW
@given(attacks())
def test_one_incident_per_attack_incremental_equals_batch(
    sqlite_engine: Engine, data: tuple[int, list[Attempt], list[Attempt]]
) -> None:
    """Issue 14, incidents: each attack (its flags on email, IP, customer, as bursts and as card
    testing) is one incident, whatever the order and duplication; batch agrees."""
    count, attempts, stream = data
    stream_in(sqlite_engine, stream, RULES)
    expected = reference(attempts, RULES)
    assert len(expected) == count  # every attack is flagged (3+ failures of one email)
    assert stored(sqlite_engine) == expected
    rebuild(sqlite_engine, RULES)
    assert stored(sqlite_engine) == expected


@SLOW
@given(streams())
def test_random_streams_incremental_equals_batch(
    sqlite_engine: Engine, data: tuple[list[Attempt], list[Attempt]]
) -> None:
    """Random streams sharing entities across attempts, with redeliveries that move an attempt
    (which shrinks flags and may split incidents): incidents equal the reference either way."""
    attempts, stream = data
    stream_in(sqlite_engine, stream, RULES)
    expected = reference(attempts, RULES)
    assert stored(sqlite_engine) == expected
    with session_scope(sqlite_engine) as session:  # batch over stored state changes nothing
        result = batch.detect_period(session, RULES)
    assert result.changes.created == result.changes.removed == []
    assert stored(sqlite_engine) == expected
    rebuild(sqlite_engine, RULES)
    assert stored(sqlite_engine) == expected


def test_batch_splits_an_incident_whose_link_is_gone(sqlite_engine: Engine) -> None:
    """An incident holding two unconnected groups of flags (left by older rules) is split."""
    attempts = [
        Attempt(f"a{i}", T0 + timedelta(minutes=i), card_fingerprint=f"A{i}", ip_address="ip_a")
        for i in range(3)
    ] + [
        Attempt(f"b{i}", T0 + timedelta(minutes=i), card_fingerprint=f"B{i}", ip_address="ip_b")
        for i in range(3)
    ]
    stream_in(sqlite_engine, attempts, RULES)
    with session_scope(sqlite_engine) as session:
        session.execute(update(RiskFlag).values(incident_id=1))
    with session_scope(sqlite_engine) as session:
        batch.detect_period(session, RULES)
    assert stored(sqlite_engine) == reference(attempts, RULES)
    assert len(reference(attempts, RULES)) == 2


# --- Review of an incident ---------------------------------------------------------------------

FINANCE = Actor("finance", "finance")


def one_attack(engine: Engine) -> tuple[int, frozenset[int]]:
    attempts = [
        Attempt(f"x{i}", T0 + timedelta(minutes=i), f"fp{i}", "cus_x", "x@example.com", "ip_x")
        for i in range(3)
    ]
    stream_in(engine, attempts, RULES)
    with session_scope(engine, write=False) as session:
        (incident,) = reviews.list_incidents(session)
        return incident.id, frozenset(f.id for f in reviews.incident_flags(session, incident.id))


def test_a_review_closes_every_flag_once_and_a_double_submit_changes_nothing(
    sqlite_engine: Engine,
) -> None:
    """Issue 13 finding 2 (double click on "Confirm attack" saved nothing): a second submission
    of the same review, even with the note cleared, is a no-op, not an error or a second entry."""
    incident_id, seen = one_attack(sqlite_engine)
    assert len(seen) == 6  # email, IP, customer: each a burst and card testing
    for note, changed in (("Issuer confirmed.", True), ("", False)):
        with session_scope(sqlite_engine) as session:
            _incident, did = reviews.review_incident(
                session, FINANCE, incident_id, "confirm", note, seen
            )
        assert did is changed
    with session_scope(sqlite_engine, write=False) as session:
        flags = reviews.incident_flags(session, incident_id)
        assert {f.status for f in flags} == {"confirmed"}
        entries = session.execute(select(AuditEntry)).scalars().all()
        assert [(e.action, e.target) for e in entries] == [
            ("risk.incident_confirmed", f"risk_incident:{incident_id}")
        ]
        assert sorted(entries[0].details["flags"]) == sorted(seen)
    with session_scope(sqlite_engine) as session, pytest.raises(reviews.ReviewError):
        reviews.review_incident(session, FINANCE, incident_id, "dismiss", "no", seen)


def test_a_review_of_an_incident_that_changed_since_shown_writes_nothing(
    sqlite_engine: Engine,
) -> None:
    incident_id, seen = one_attack(sqlite_engine)
    with (
        session_scope(sqlite_engine) as session,
        pytest.raises(reviews.ReviewError, match="changed"),
    ):
        reviews.review_incident(session, FINANCE, incident_id, "dismiss", "n", seen - {min(seen)})
    with session_scope(sqlite_engine, write=False) as session:
        assert reviews.open_incident_count(session) == 1
        assert session.execute(select(AuditEntry)).first() is None
