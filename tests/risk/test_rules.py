"""Rules finance can tune (issue 14): a changed threshold or window, or an allow-list entry,
changes flags exactly as a reference computation says, on the webhook path and after saving;
a backtest writes nothing; every rule change is in the audit log."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from core.auth import audit
from core.auth.permissions import Actor, PermissionDenied
from core.db import session_scope
from core.models import AuditEntry, RiskFlag, RiskIncident, RiskRuleSet
from core.risk import backtest, detector, rules
from core.risk.detector import Attempt, Filter, Rules
from core.settings import load_settings
from tests.risk.test_bursts import streams
from tests.risk.test_incidents import reference, stored, stream_in

ADMIN = Actor("admin", "admin")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _counts(f: Filter, a: Attempt) -> bool:
    """The reference's reading of a filter (written apart from Filter.counts)."""
    codes = {a.decline_code, a.failure_code}
    return (
        (not f.currency or a.currency == f.currency)
        and (not f.min_amount or (a.amount or 0) >= f.min_amount)
        and (not f.decline_codes or any(code in f.decline_codes for code in codes))
    )


def expected_flags(attempts: list[Attempt], ruleset: Rules) -> list[tuple[Any, ...]]:
    """Reference by definition, quadratic and independent of core.risk.detector's scan: for each
    rule, every counted attempt's time r is a hit when the counted attempts in [r - window, r]
    reach the threshold (card testing: in distinct cards); a hit's window starts at the first of
    them; touching windows merge; a flag shows all the entity's failed attempts in its span."""
    keys = []
    unique = detector.dedupe(attempts)
    for kind, pattern, threshold, minutes, counted in rules.rule_table(ruleset):
        window = timedelta(minutes=minutes)
        column = detector.ENTITY_COLUMNS[kind]  # type: ignore[index]
        for value in {getattr(a, column) for a in unique} - {None}:
            if (kind, value) in ruleset.allow:
                continue
            mine = [a for a in unique if getattr(a, column) == value]
            spans = []
            for r in {a.created for a in mine if _counts(counted, a)}:
                inside = [a for a in mine if _counts(counted, a) and r - window <= a.created <= r]
                cards = {a.card_fingerprint for a in inside} - {None}
                if (len(inside) if pattern == "burst" else len(cards)) >= threshold:
                    spans.append((min(a.created for a in inside), r))
            for start, end in detector.merge_windows(spans):
                held = [a for a in mine if start <= a.created <= end]
                cards = {a.card_fingerprint for a in held} - {None}
                keys.append((kind, value, pattern, start, end, len(held), len(cards)))
    return sorted(keys)


@st.composite
def detailed_streams(draw: st.DrawFn) -> tuple[list[Attempt], list[Attempt]]:
    """`streams()` with amounts, currencies and decline codes; a redelivery carries each of them
    or not (unknown yet), never a different value, as a charge and its PaymentIntent do."""
    attempts, stream = draw(streams())
    details: dict[str, dict[str, Any]] = {
        a.id: {
            "amount": draw(st.sampled_from([500, 2000, 9000])),
            "currency": draw(st.sampled_from(["usd", "eur"])),
            "decline_code": draw(st.sampled_from([None, "insufficient_funds", "fraudulent"])),
            "failure_code": draw(st.sampled_from(["card_declined", "incorrect_cvc"])),
        }
        for a in attempts
    }
    full = [replace(a, **details[a.id]) for a in attempts]
    delivered = []
    for a in stream:
        known = draw(st.sets(st.sampled_from(sorted(details[a.id]))))
        delivered.append(replace(a, **{k: v for k, v in details[a.id].items() if k in known}))
    # every attempt delivered fully at least once, so its details end up known
    last = {a.id: max(s.created for s in stream if s.id == a.id) for a in full}
    return full, delivered + [replace(a, created=last[a.id]) for a in full]


FILTERS = st.builds(
    lambda currency, minimum, codes: Filter(currency, minimum if currency else 0, codes),
    st.sampled_from(["", "usd"]),
    st.sampled_from([0, 2000]),
    st.sampled_from([(), ("fraudulent",), ("incorrect_cvc", "insufficient_funds")]),
)

RULESETS = st.builds(
    lambda burst, testing, ip_window, allow, counted, promo: rules.build(
        [
            (kind, pattern, testing if pattern == "card_testing" else burst, 60, promo)
            for kind, pattern, *_ in rules.rule_table(Rules())
            if kind != "ip"
        ]
        + [
            ("ip", "burst", burst, ip_window, counted),
            ("ip", "card_testing", testing, ip_window, counted),
        ],
        allow,
    ),
    st.integers(2, 5),
    st.integers(2, 4),
    st.sampled_from([15, 60, 90]),
    st.lists(
        st.sampled_from(
            [("card", "A"), ("ip", "203.0.113.1"), ("email", "a@example.com"), ("customer", "x")]
        ),
        max_size=2,
    ),
    FILTERS,
    FILTERS,
)
SLOW = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(max_examples=300, deadline=None)
@given(detailed_streams(), RULESETS)
def test_pure_detection_follows_each_rule(data: tuple[list[Attempt], Any], ruleset: Rules) -> None:
    attempts, stream = data
    assert sorted(f.key for f in detector.detect(stream, ruleset)) == expected_flags(
        attempts, ruleset
    )


@SLOW
@given(detailed_streams(), RULESETS)
def test_webhook_path_and_a_saved_rule_set_follow_the_reference(
    sqlite_engine: Engine, data: tuple[list[Attempt], list[Attempt]], ruleset: Rules
) -> None:
    attempts, stream = data
    stream_in(sqlite_engine, stream, ruleset)  # incremental under the rules
    assert sorted(k[:7] for p in stored(sqlite_engine) for k in p) == expected_flags(
        attempts, ruleset
    )
    assert stored(sqlite_engine) == reference(attempts, ruleset)
    stream_in(sqlite_engine, stream, Rules())  # under the defaults, then an admin saves
    with session_scope(sqlite_engine) as session:
        session.execute(delete(RiskRuleSet))  # each example starts from the seed
    with session_scope(sqlite_engine) as session:
        saved = backtest.save(session, ADMIN, load_settings(), ruleset, "tuning", 0)
        assert saved.changed
    assert stored(sqlite_engine) == reference(attempts, ruleset)


def snapshot(engine: Engine) -> list[Any]:
    with session_scope(engine, write=False) as session:
        return [
            sorted(
                tuple(
                    vars(r).get(c)
                    for c in (
                        "id",
                        "status",
                        "failures",
                        "incident_id",
                        "window_start",
                        "window_end",
                    )
                )
                for r in session.execute(select(RiskFlag)).scalars()
            ),
            sorted(
                (r.id, r.status, r.flags) for r in session.execute(select(RiskIncident)).scalars()
            ),
            list(session.execute(select(RiskRuleSet.version)).scalars()),
            list(session.execute(select(AuditEntry.id)).scalars()),
        ]


def attack(n: int, start: int, **entities: Any) -> list[Attempt]:
    return [
        Attempt(f"ch_{n}_{i}", T0 + timedelta(minutes=start + i), f"fp_{n}_{i}", **entities)
        for i in range(5)
    ]


def test_a_backtest_writes_nothing_and_shows_the_difference(sqlite_engine: Engine) -> None:
    attempts = attack(1, 0, ip_address="198.51.100.1") + attack(2, 300, ip_address="10.0.0.1")
    stream_in(sqlite_engine, attempts, Rules())
    before = snapshot(sqlite_engine)
    office = rules.build(rules.rule_table(Rules()), [("ip", "10.0.0.1")])
    strict = rules.build(
        [(k, p, 6 if p == "burst" else t, m, f) for k, p, t, m, f in rules.rule_table(Rules())],
        [],
    )
    with session_scope(sqlite_engine) as session:
        test = backtest.backtest(session, Rules(), office, T0, T0 + timedelta(days=1))
        assert (len(test.current.incidents), len(test.proposed.incidents)) == (2, 1)
        assert {k[1] for k in test.only_current} == {"10.0.0.1"} and not test.only_proposed
        test = backtest.backtest(session, Rules(), strict, T0, T0 + timedelta(days=1))
        assert {(k[1], k[2]) for k in test.only_current} == {
            ("198.51.100.1", "burst"),
            ("10.0.0.1", "burst"),
        }
    assert snapshot(sqlite_engine) == before


def test_every_rule_change_is_audited_and_versioned(sqlite_engine: Engine) -> None:
    settings_ = load_settings()
    seeded = rules.rule_table(rules.seed(settings_))
    first = rules.build([(k, p, 5 if k == "card" else t, m, f) for k, p, t, m, f in seeded], [])
    second = rules.build(rules.rule_table(first), [("ip", "192.0.2.1")])
    with session_scope(sqlite_engine) as session:
        assert rules.live(session, settings_) == (0, rules.seed(settings_))
        assert backtest.save(session, ADMIN, settings_, first, "cards retry more", 0).version == 1
    with session_scope(sqlite_engine) as session:
        again = backtest.save(session, ADMIN, settings_, first, "double click", 0)
        assert (again.version, again.changed) == (1, False)
        with pytest.raises(rules.RulesError, match="changed since"):
            backtest.save(session, ADMIN, settings_, second, "stale form", 0)
        assert backtest.save(session, ADMIN, settings_, second, "office IP", 1).version == 2
        with pytest.raises(PermissionDenied):
            backtest.save(session, Actor("f", "finance"), settings_, first, "no", 2)
    with session_scope(sqlite_engine, write=False) as session:
        entries = (
            session.execute(
                select(AuditEntry)
                .where(AuditEntry.action == "risk.rules_saved")
                .order_by(AuditEntry.id)
            )
            .scalars()
            .all()
        )
        assert [(e.target, e.details["note"]) for e in entries] == [
            ("risk_rules:1", "cards retry more"),
            ("risk_rules:2", "office IP"),
        ]
        assert [r["kind"] for r in entries[0].details["changed"]] == ["card"]
        # The audit log keeps a keyed pseudonym of an IP address, never the address (issue 12).
        assert entries[1].details["allow_added"] == [["ip", audit.pseudonym("ip", "192.0.2.1")]]
        assert rules.live(session, settings_) == (2, second)


def test_the_seed_keeps_todays_defaults_except_promotion_codes() -> None:
    table = {(k, p): (t, m) for k, p, t, m, f in rules.rule_table(rules.seed(load_settings()))}
    assert table.pop(("promotion_code", "burst")) == (12, 60)
    assert set(table.values()) == {(4, 60), (3, 60)}


@settings(max_examples=50, deadline=None)
@given(RULESETS)
def test_a_stored_rule_set_reads_back_the_same_with_its_filters(ruleset: Rules) -> None:
    assert rules.from_body(rules.to_body(ruleset)) == ruleset


def test_versions_saved_before_filters_still_load_and_a_filter_is_saved_audited(
    sqlite_engine: Engine,
) -> None:
    settings_ = load_settings()
    old_body = {
        "rules": [
            {"kind": k, "pattern": p, "threshold": t, "window_minutes": m}
            for k, p, t, m, _f in rules.rule_table(rules.seed(settings_))
        ],
        "allow": [],
    }
    assert rules.rule_table(rules.from_body(old_body)) == rules.rule_table(rules.seed(settings_))
    large = rules.make_filter("eur", "49.99", "fraudulent, stolen_card fraudulent")
    assert large == Filter("eur", 4999, ("fraudulent", "stolen_card"))
    assert rules.describe_filter(large) == "at least EUR 49.99; declined fraudulent, stolen_card"
    edited = rules.build(
        [(k, p, t, m, large if k == "card" else f) for k, p, t, m, f in rules.rule_table(Rules())],
        [],
    )
    with session_scope(sqlite_engine) as session:
        backtest.save(session, ADMIN, settings_, edited, "large fraud only", 0)
    with session_scope(sqlite_engine, write=False) as session:
        assert rules.live(session, settings_) == (1, edited)
        entry = session.execute(
            select(AuditEntry).where(AuditEntry.action == "risk.rules_saved")
        ).scalar_one()
        (changed,) = [r for r in entry.details["changed"] if r["kind"] == "card"]
        assert changed["currency"] == "eur" and changed["min_amount"] == 4999
        assert changed["decline_codes"] == ["fraudulent", "stolen_card"]
