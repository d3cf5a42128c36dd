"""core.risk.detector: boundary tables and property tests (batch = incremental, duplicates
count once)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.risk import batch, detector
from core.risk.detector import Attempt, Flag, Point, Rules, Stored, Window

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RULES = Rules(threshold=4, window=timedelta(minutes=60), card_testing_threshold=3)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def card_attempts(offsets: list[float], card: str = "fp_1") -> list[Attempt]:
    return [Attempt(f"ch_{i}", at(m), card_fingerprint=card) for i, m in enumerate(offsets)]


def spans(flags: list[Flag], kind: str = "card", pattern: str = "burst") -> list[tuple[float, ...]]:
    return [
        (
            (f.window_start - T0) / timedelta(minutes=1),
            (f.window_end - T0) / timedelta(minutes=1),
            f.failures,
        )
        for f in flags
        if f.entity_kind == kind and f.pattern == pattern
    ]


# The window is closed: attempts exactly `window` apart are within one window.
BOUNDARY_CASES = [
    ("exactly the threshold", [0, 10, 20, 30], [(0, 30, 4)]),
    ("one below the threshold", [0, 10, 20], []),
    ("first and last exactly at the window's edges", [0, 20, 40, 60], [(0, 60, 4)]),
    ("last one second past the window", [0, 20, 40, 60 + 1 / 60], []),
    ("all at one instant", [5, 5, 5, 5], [(5, 5, 4)]),
    ("overlapping windows merge", [0, 10, 20, 30, 50, 80], [(0, 80, 6)]),
    ("chain across several windows", [0, 15, 30, 45, 60, 75, 90, 105], [(0, 105, 8)]),
    ("two separate bursts", [0, 1, 2, 3, 200, 201, 202, 203], [(0, 3, 4), (200, 203, 4)]),
    (
        "windows touching at one instant merge",
        [0, 20, 40, 60, 60, 80, 100, 120],
        [(0, 120, 8)],
    ),
    ("sparse failures never burst", [0, 30, 61, 92, 123, 154], []),
    ("an outlier before the burst stays out", [0, 100, 101, 102, 103], [(100, 103, 4)]),
    ("a failure just outside the window stays out", [0, 59, 61, 62, 63], [(59, 63, 4)]),
]


@pytest.mark.parametrize(
    ("offsets", "expected"), [c[1:] for c in BOUNDARY_CASES], ids=[c[0] for c in BOUNDARY_CASES]
)
def test_burst_boundaries(offsets: list[float], expected: list[tuple[float, ...]]) -> None:
    attempts = card_attempts(offsets)
    assert spans(detector.detect(attempts, RULES)) == expected
    # Whatever the order of arrival, and however often each attempt is delivered.
    shuffled = attempts * 3
    random.Random(len(offsets)).shuffle(shuffled)
    assert spans(detector.detect(shuffled, RULES)) == expected


DUPLICATE_CASES = [
    ("one attempt delivered four times", ["a", "a", "a", "a"], []),
    ("three attempts, one delivered twice", ["a", "b", "c", "c"], []),
    ("four distinct attempts", ["a", "b", "c", "d"], [(0, 3, 4)]),
    ("four distinct, each twice", ["a", "b", "c", "d", "d", "c", "b", "a"], [(0, 3, 4)]),
]


@pytest.mark.parametrize(
    ("ids", "expected"), [c[1:] for c in DUPLICATE_CASES], ids=[c[0] for c in DUPLICATE_CASES]
)
def test_duplicates_count_once(ids: list[str], expected: list[tuple[float, ...]]) -> None:
    minute = {"a": 0, "b": 1, "c": 2, "d": 3}
    attempts = [Attempt(i, at(minute[i]), card_fingerprint="fp") for i in ids]
    assert spans(detector.detect(attempts, RULES)) == expected


def test_a_duplicate_keeps_the_earliest_time_and_every_field() -> None:
    late = Attempt("ch_1", at(30), card_fingerprint="fp", email=None)
    early = Attempt("ch_1", at(10), card_fingerprint=None, email="x@example.com")
    for pair in ([late, early], [early, late]):
        (merged,) = detector.dedupe(pair)
        assert merged == Attempt("ch_1", at(10), card_fingerprint="fp", email="x@example.com")


def test_split_across_two_batches_gives_the_same_flags() -> None:
    attempts = card_attempts([0, 10, 20, 30, 40, 200, 201, 202, 203])
    whole = detector.detect(attempts, RULES)
    assert stored_after_stream(attempts[:5], RULES) == keys(whole[:1])
    assert stored_after_stream(attempts, RULES) == keys(whole)
    assert stored_after_stream(attempts[5:] + attempts[:5], RULES) == keys(whole)


CARD_TESTING_CASES = [
    ("three cards from one IP", ["A", "B", "C"], [(0, 2, 3)], []),
    ("two cards, four failures: a burst, not card testing", ["A", "A", "B", "B"], [], [(0, 3, 4)]),
    ("five cards", ["A", "B", "C", "D", "E"], [(0, 4, 5)], [(0, 4, 5)]),
    (
        "attempts without a fingerprint do not count as cards",
        ["A", None, None, "B"],
        [],
        [(0, 3, 4)],
    ),
]


@pytest.mark.parametrize(
    ("cards", "testing", "burst"),
    [c[1:] for c in CARD_TESTING_CASES],
    ids=[c[0] for c in CARD_TESTING_CASES],
)
def test_card_testing(
    cards: list[str | None], testing: list[tuple[float, ...]], burst: list[tuple[float, ...]]
) -> None:
    attempts = [
        Attempt(f"ch_{i}", at(i), card_fingerprint=c, ip_address="203.0.113.9")
        for i, c in enumerate(cards)
    ]
    flags = detector.detect(attempts, RULES)
    assert spans(flags, "ip", "card_testing") == testing
    assert spans(flags, "ip", "burst") == burst
    # A card cannot be card-tested by itself.
    assert spans(flags, "card", "card_testing") == []


def test_card_testing_window_edges() -> None:
    attempts = [
        Attempt("a", at(0), card_fingerprint="A", customer_id="cus_1"),
        Attempt("b", at(30), card_fingerprint="B", customer_id="cus_1"),
        Attempt("c", at(60), card_fingerprint="C", customer_id="cus_1"),
        Attempt("d", at(121), card_fingerprint="D", customer_id="cus_1"),
    ]
    flags = detector.detect(attempts, RULES)
    assert spans(flags, "customer", "card_testing") == [(0, 60, 3)]
    assert [f.distinct_cards for f in flags if f.pattern == "card_testing"] == [3]


def test_every_entity_kind_is_detected() -> None:
    common: dict[str, Any] = {
        "customer_id": "cus_1",
        "email": "a@example.com",
        "ip_address": "198.51.100.7",
        "promotion_code": "promo_1",
    }
    attempts = [Attempt(f"ch_{i}", at(i), card_fingerprint="fp", **common) for i in range(4)]
    flags = detector.detect(attempts, RULES)
    assert sorted({f.entity_kind for f in flags if f.pattern == "burst"}) == sorted(
        detector.ENTITY_COLUMNS
    )


RECONCILE_CASES = [
    ("new window, nothing stored", [], [(0, 30, 4)], {"insert": 1}),
    ("same window stored", [(1, 0, 30, 4, "open")], [(0, 30, 4)], {}),
    (
        "grown window keeps the flag",
        [(1, 0, 30, 4, "open")],
        [(0, 50, 5)],
        {"update": [(1, "open")]},
    ),
    (
        "two stored flags bridged into one",
        [(1, 0, 30, 4, "open"), (2, 100, 130, 4, "confirmed")],
        [(0, 130, 9)],
        {"update": [(1, "confirmed")], "delete": [2]},
    ),
    (
        "dismissed flag gaining failures is reopened",
        [(1, 0, 30, 4, "dismissed")],
        [(0, 40, 5)],
        {"update": [(1, "open")]},
    ),
    ("dismissed flag unchanged stays dismissed", [(1, 0, 30, 4, "dismissed")], [(0, 30, 4)], {}),
    ("stored flag no longer supported", [(1, 0, 30, 4, "open")], [], {"delete": [1]}),
]


@pytest.mark.parametrize(
    ("stored", "windows", "expected"),
    [c[1:] for c in RECONCILE_CASES],
    ids=[c[0] for c in RECONCILE_CASES],
)
def test_reconcile(
    stored: list[tuple[int, int, int, int, str]],
    windows: list[tuple[int, int, int]],
    expected: dict[str, object],
) -> None:
    plan = detector.reconcile(
        [Stored(i, at(s), at(e), n, status) for i, s, e, n, status in stored],
        [Window(at(s), at(e), n, 0) for s, e, n in windows],
    )
    assert len(plan.insert) == expected.get("insert", 0)
    assert [(i, status) for i, _w, status in plan.update] == expected.get("update", [])
    assert plan.delete == expected.get("delete", [])


def test_dense_entities_is_a_necessary_condition() -> None:
    codes = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], dtype=np.int64)
    times = np.array([0, 5, 10, 0, 20, 40, 60, 0, 20, 40, 61], dtype=np.int64)
    assert batch.dense_entities(codes, times, 3, 60).tolist() == [1, 2, 3]
    assert batch.dense_entities(codes, times, 4, 60).tolist() == [2]
    assert batch.dense_entities(codes[:0], times[:0], 4, 60).tolist() == []


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Rules(threshold=0)
    with pytest.raises(ValueError, match="window"):
        Rules(window=timedelta(0))


# --- Incremental detection, as core.risk.hook.refresh does it, on plain data -------------------


FlagKey = tuple[str, str, str, datetime, datetime, int, int]


def keys(flags: list[Flag]) -> list[FlagKey]:
    return sorted(f.key for f in flags)


def stored_after_stream(stream: list[Attempt], rules: Rules) -> list[FlagKey]:
    """Feed attempts one at a time, recomputing only each attempt's neighbourhood and
    reconciling the stored flags, exactly the way core.risk.hook.refresh does with the database."""
    known: dict[str, Attempt] = {}
    store: dict[tuple[str, str, str], dict[int, tuple[datetime, datetime, int, int, str]]] = {}
    ids = iter(range(1, 10**9))
    for arriving in stream:
        old = known.get(arriving.id)
        attempt = arriving if old is None else detector.merge_duplicate(old, arriving)
        known[attempt.id] = attempt
        times = [attempt.created]
        if old is not None and old.created != attempt.created:
            times.append(old.created)
        lo, hi = detector.affected_range(times, rules)
        for kind in detector.ENTITY_COLUMNS:
            value = attempt.entity(kind)
            if value is None:
                continue
            for pattern in rules.patterns(kind):
                flags = store.setdefault((kind, value, pattern), {})
                x_lo, x_hi = lo, hi
                while True:
                    near = {
                        i: f
                        for i, f in flags.items()
                        if f[1] >= x_lo - rules.window and f[0] <= x_hi
                    }
                    new_lo = min([x_lo, *(f[0] for f in near.values())])
                    new_hi = max([x_hi, *(f[1] for f in near.values())])
                    if (new_lo, new_hi) == (x_lo, x_hi):
                        break
                    x_lo, x_hi = new_lo, new_hi
                points = [
                    Point(a.created, a.id, a.card_fingerprint)
                    for a in known.values()
                    if a.entity(kind) == value and x_lo - rules.window <= a.created <= x_hi
                ]
                windows = detector.detect_windows(points, pattern, rules, ends=(x_lo, x_hi))
                plan = detector.reconcile(
                    [Stored(i, f[0], f[1], f[2], f[4], f[3]) for i, f in near.items()], windows
                )
                for i in plan.delete:
                    del flags[i]
                for i, w, status in plan.update:
                    flags[i] = (w.start, w.end, w.failures, w.distinct_cards, status)
                for w in plan.insert:
                    flags[next(ids)] = (w.start, w.end, w.failures, w.distinct_cards, "open")
    return sorted(
        (kind, value, pattern, f[0], f[1], f[2], f[3])
        for (kind, value, pattern), flags in store.items()
        for f in flags.values()
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Attempt], list[Attempt]]:
    """(distinct attempts, a stream delivering each one or more times in any order; a
    redelivery may carry a later time or fewer fields, as a charge and its PaymentIntent do)."""
    n = draw(st.integers(0, 30))

    def pick(pool: list[str]) -> st.SearchStrategy[str | None]:
        return st.one_of(st.none(), st.sampled_from(pool))

    attempts = []
    for i in range(n):
        attempts.append(
            Attempt(
                id=f"ch_{i}",
                # whole minutes over a few hours: many ties and exact window edges
                created=at(draw(st.integers(0, 240))),
                card_fingerprint=draw(pick(["A", "B", "C", "D", "E"])),
                customer_id=draw(pick(["cus_1", "cus_2"])),
                email=draw(pick(["a@example.com", "b@example.com"])),
                ip_address=draw(pick(["203.0.113.1", "203.0.113.2"])),
                promotion_code=draw(pick(["promo_1"])),
            )
        )
    stream = list(attempts)
    for a in attempts:
        for _ in range(draw(st.integers(0, 2))):
            later = draw(st.sampled_from([0, 0, 1, 60]))
            blank = draw(st.sets(st.sampled_from(list(detector.ENTITY_COLUMNS.values()))))
            blanks: dict[str, Any] = dict.fromkeys(blank)
            stream.append(replace(a, created=a.created + timedelta(minutes=later), **blanks))
    stream = draw(st.permutations(stream))
    return attempts, stream


RULE_SETS = st.builds(
    Rules,
    threshold=st.integers(1, 6),
    window=st.sampled_from([timedelta(minutes=m) for m in (1, 15, 60, 90)]),
    card_testing_threshold=st.integers(2, 4),
)


@settings(max_examples=150, deadline=None)
@given(streams(), RULE_SETS)
def test_incremental_equals_batch(data: tuple[list[Attempt], list[Attempt]], rules: Rules) -> None:
    attempts, stream = data
    batch = keys(detector.detect(attempts, rules))
    assert keys(detector.detect(stream, rules)) == batch  # duplicates and order change nothing
    assert stored_after_stream(stream, rules) == batch


@settings(max_examples=100, deadline=None)
@given(streams(), RULE_SETS)
def test_no_attempt_counts_twice(data: tuple[list[Attempt], list[Attempt]], rules: Rules) -> None:
    attempts, stream = data
    for flag in detector.detect(stream, rules):
        assert len(set(flag.attempt_ids)) == len(flag.attempt_ids) == flag.failures
        members = [a for a in attempts if a.id in flag.attempt_ids]
        assert all(a.entity(flag.entity_kind) == flag.entity_value for a in members)  # type: ignore[arg-type]
        assert all(flag.window_start <= a.created <= flag.window_end for a in members)
        assert flag.failures >= (
            rules.threshold if flag.pattern == "burst" else rules.card_testing_threshold
        )
