"""Pure burst detection over failed payment attempts: no database, no I/O.

Definitions (one entity = one card fingerprint, customer, email, IP address or promotion code):

- The window is CLOSED: attempts at t and t + window are within one window of each other.
- A rule may carry a filter (`Filter`: a currency, a minimum amount in it, decline codes); the
  attempts it matches are the rule's *counted* attempts (without a filter, every failed one).
- A time r is a *hit* for pattern `burst` when the entity has at least `threshold` counted
  attempts in [r - window, r], and for pattern `card_testing` when those attempts carry at least
  `card_testing_threshold` distinct card fingerprints. Only times of counted attempts are
  candidates.
- A hit's window runs from the earliest counted attempt in [r - window, r] to r.
- Flags are the union of the hit windows: windows that overlap or touch merge into one flag
  (from the first window's start to the last one's end), and a flag's attempts are the
  entity's failed attempts in [window_start, window_end], counted or not: a filter decides when
  a rule fires, and the flag then shows everything the entity did in that span (so incidents,
  failure counts and the incremental path do not depend on the filter).

An attempt's fields only ever go from unknown to known (core.webhook.handlers.record_attempt
merges deliveries so), so an attempt a filter counts stays counted: a redelivery can only add
hits, like a new attempt.

Everything is a function of the *set* of attempts (deduplicated by attempt id, counted at
Stripe's `created`), so arrival order and duplicate deliveries cannot change the result.

Adding or moving attempts at times P changes hits only for right ends in [p, p + window].
`affected_range` and `detect_windows(..., ends=...)` let the incremental path recompute just
that neighbourhood: if every stored flag overlapping [lo - window, hi] lies inside [lo, hi],
replacing those flags by the windows of the hits with right ends in [lo, hi] gives exactly the
flags that batch detection over all attempts gives (interval union is associative). That is
why incremental and batch detection agree by construction; tests check it on random streams.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Literal, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)
EntityKind = Literal["card", "customer", "email", "ip", "promotion_code"]
Pattern = Literal["burst", "card_testing"]

# entity kind -> payment_attempts column
ENTITY_COLUMNS: dict[EntityKind, str] = {
    "card": "card_fingerprint",
    "customer": "customer_id",
    "email": "email",
    "ip": "ip_address",
    "promotion_code": "promotion_code",
}
# Card testing: many cards failing from one buyer (a card cannot test many cards).
CARD_TESTING_KINDS: tuple[EntityKind, ...] = ("ip", "customer", "email")
PATTERNS: tuple[Pattern, ...] = ("burst", "card_testing")

BURST_THRESHOLD = 4  # failed attempts (settings.burst_threshold overrides)
BURST_WINDOW = timedelta(minutes=60)  # settings.burst_window_minutes overrides
# Three different cards declined for one buyer within the window: people retry with a second
# card, rarely a third; testers go through lists of them.
CARD_TESTING_THRESHOLD = 3


MAX_DECLINE_CODES = 20


@dataclass(frozen=True, order=True)
class Filter:
    """Which failed attempts a rule counts (every field optional; the empty filter counts all):
    in `currency` (lower-case ISO code, as Stripe writes it), of at least `min_amount` in its
    minor units (only with a currency: amounts in different currencies do not compare), and
    declined with one of `decline_codes` (Stripe's decline code or failure code)."""

    currency: str = ""
    min_amount: int = 0
    decline_codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_amount < 0 or (self.min_amount and not self.currency):
            raise ValueError("a minimum amount needs a currency and is not negative")

    def __bool__(self) -> bool:
        return bool(self.currency or self.min_amount or self.decline_codes)

    def counts(self, p: Point) -> bool:
        if self.currency and p.currency != self.currency:
            return False
        if self.min_amount and (p.amount or 0) < self.min_amount:
            return False
        return not self.decline_codes or bool(
            {p.decline_code, p.failure_code} & set(self.decline_codes)
        )


NO_FILTER = Filter()


@dataclass(frozen=True)
class Rules:
    """The detection rules: a default threshold and window per pattern, optional overrides per
    (entity kind, pattern), and an allow list of entities that never flag. A `Rules` without
    overrides is also the plain rule of one (kind, pattern), as `detect_windows` reads it,
    with its `filter`."""

    threshold: int = BURST_THRESHOLD
    window: timedelta = BURST_WINDOW
    card_testing_threshold: int = CARD_TESTING_THRESHOLD
    # (kind, pattern, threshold, window, filter): replaces the default for that kind and pattern
    overrides: tuple[tuple[str, str, int, timedelta, Filter], ...] = ()
    allow: frozenset[tuple[str, str]] = frozenset()  # (kind, value) that never flag
    filter: Filter = NO_FILTER  # of a plain rule (overrides carry their own)

    def __post_init__(self) -> None:
        thresholds = [self.threshold, self.card_testing_threshold, *(o[2] for o in self.overrides)]
        if min(thresholds) < 1:
            raise ValueError("thresholds must be at least 1")
        if min([self.window, *(o[3] for o in self.overrides)]) <= timedelta(0):
            raise ValueError("the window must be positive")

    def minimum(self, pattern: Pattern) -> int:
        """The fewest attempts that can make a hit for `pattern`."""
        return self.threshold if pattern == "burst" else self.card_testing_threshold

    def patterns(self, kind: str) -> tuple[Pattern, ...]:
        return PATTERNS if kind in CARD_TESTING_KINDS else ("burst",)

    def rule(self, kind: str, pattern: Pattern) -> Rules:
        """The plain rule for one entity kind and pattern (what `detect_windows` takes)."""
        for o_kind, o_pattern, threshold, window, counted in self.overrides:
            if (o_kind, o_pattern) == (kind, pattern):
                return Rules(threshold, window, threshold, filter=counted)
        if not self.overrides and not self.allow:
            return self
        return Rules(self.threshold, self.window, self.card_testing_threshold, filter=self.filter)

    @property
    def filtered(self) -> bool:
        """Whether any rule counts only some attempts (then detection reads their details)."""
        return bool(self.filter) or any(o[4] for o in self.overrides)

    @property
    def reach(self) -> timedelta:
        """The longest window of any rule: ranges widened by it cover every rule's window."""
        return max([self.window, *(o[3] for o in self.overrides)])

    def allows(self, kind: str, value: str) -> bool:
        return (kind, value) in self.allow


@dataclass(frozen=True)
class Attempt:
    """A failed attempt as detection sees it (a payment_attempts row)."""

    id: str
    created: datetime
    card_fingerprint: str | None = None
    customer_id: str | None = None
    email: str | None = None
    ip_address: str | None = None
    promotion_code: str | None = None
    amount: int | None = None
    currency: str | None = None
    decline_code: str | None = None
    failure_code: str | None = None

    def entity(self, kind: EntityKind) -> str | None:
        value: str | None = getattr(self, ENTITY_COLUMNS[kind])
        return value


@dataclass(frozen=True, order=True)
class Point:
    """One failed attempt of one entity: when, which attempt, which card; and what rule filters
    read (amount, currency, decline and failure code), when they were read."""

    created: datetime
    id: str
    card: str | None = None
    amount: int | None = field(default=None, compare=False)
    currency: str | None = field(default=None, compare=False)
    decline_code: str | None = field(default=None, compare=False)
    failure_code: str | None = field(default=None, compare=False)


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime
    failures: int
    distinct_cards: int
    attempt_ids: tuple[str, ...] = field(compare=False, default=())


@dataclass(frozen=True, order=True)
class Flag:
    entity_kind: str
    entity_value: str
    pattern: str
    window_start: datetime
    window_end: datetime
    failures: int
    distinct_cards: int
    attempt_ids: tuple[str, ...] = field(compare=False, default=())

    @property
    def key(self) -> tuple[str, str, str, datetime, datetime, int, int]:
        return (
            self.entity_kind,
            self.entity_value,
            self.pattern,
            self.window_start,
            self.window_end,
            self.failures,
            self.distinct_cards,
        )


# What rule filters read of an attempt, beside its entities (Attempt and Point fields).
_DETAILS = ("amount", "currency", "decline_code", "failure_code")


def _first(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def merge_duplicate(a: Attempt, b: Attempt) -> Attempt:
    """Two records of one attempt id: the earliest `created` (as
    core.webhook.handlers.record_attempt keeps) and every known field; independent of which arrived
    first."""
    return Attempt(
        id=a.id,
        created=min(a.created, b.created),
        **{col: _first(getattr(a, col), getattr(b, col)) for col in ENTITY_COLUMNS.values()},
        amount=a.amount or b.amount,
        **{col: _first(getattr(a, col), getattr(b, col)) for col in _DETAILS[1:]},
    )


def dedupe(attempts: Iterable[Attempt]) -> list[Attempt]:
    """One record per attempt id, however often it was delivered."""
    seen: dict[str, Attempt] = {}
    for attempt in attempts:
        known = seen.get(attempt.id)
        seen[attempt.id] = attempt if known is None else merge_duplicate(known, attempt)
    return list(seen.values())


def points_by_entity(attempts: Iterable[Attempt]) -> dict[tuple[EntityKind, str], list[Point]]:
    """Each (kind, value) with its failed attempts, deduplicated by attempt id."""
    groups: dict[tuple[EntityKind, str], list[Point]] = {}
    for attempt in dedupe(attempts):
        for kind in ENTITY_COLUMNS:
            value = attempt.entity(kind)
            if value is not None:
                point = Point(
                    attempt.created,
                    attempt.id,
                    attempt.card_fingerprint,
                    *(getattr(attempt, col) for col in _DETAILS),
                )
                groups.setdefault((kind, value), []).append(point)
    return groups


BY_TIME = attrgetter("created", "id")


def _unique_points(points: Iterable[Point]) -> list[Point]:
    by_id: dict[str, Point] = {}
    for p in points:
        known = by_id.get(p.id)
        if known is None:
            by_id[p.id] = p
        else:
            by_id[p.id] = Point(
                min(p.created, known.created),
                p.id,
                _first(p.card, known.card),
                p.amount or known.amount,
                *(_first(getattr(p, col), getattr(known, col)) for col in _DETAILS[1:]),
            )
    return sorted(by_id.values(), key=BY_TIME)


def describe(
    points: Sequence[Point], times: Sequence[datetime], start: datetime, end: datetime
) -> Window:
    """The window [start, end] of `points` (sorted by time; `times` their times)."""
    inside = points[bisect_left(times, start) : bisect_right(times, end)]
    cards = {p.card for p in inside if p.card is not None}
    return Window(start, end, len(inside), len(cards), tuple(p.id for p in inside))


def detect_windows(
    points: Iterable[Point],
    pattern: Pattern,
    rules: Rules,
    *,
    ends: tuple[datetime | None, datetime | None] = (None, None),
    in_order: bool = False,
) -> list[Window]:
    """The merged windows of one entity's hits whose right end lies in `ends` (closed; None is
    unbounded), described with all of `points` (counted by the rule's filter or not).
    `points` must include every failed attempt in [ends[0] - window, ends[1]]; `in_order`: they
    are a list already one per attempt and sorted by time (batch reads them so)."""
    pts = points if in_order and isinstance(points, list) else _unique_points(points)
    counted = [p for p in pts if rules.filter.counts(p)] if rules.filter else pts
    lo_end, hi_end = ends
    spans: list[tuple[datetime, datetime]] = []
    cards: Counter[str] = Counter()
    first = 0
    n = len(counted)
    for i, p in enumerate(counted):
        if p.card is not None:
            cards[p.card] += 1
        if i + 1 < n and counted[i + 1].created == p.created:
            continue  # evaluate each distinct time once, with all its attempts
        r = p.created
        while counted[first].created < r - rules.window:
            gone = counted[first].card
            if gone is not None:
                cards[gone] -= 1
                if not cards[gone]:
                    del cards[gone]
            first += 1
        if (lo_end is not None and r < lo_end) or (hi_end is not None and r > hi_end):
            continue
        count = i + 1 - first
        hit = (
            count >= rules.threshold
            if pattern == "burst"
            else (len(cards) >= rules.card_testing_threshold)
        )
        if not hit:
            continue
        start = counted[first].created
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], r)
        else:
            spans.append((start, r))
    times = [p.created for p in pts]
    return [describe(pts, times, s, e) for s, e in spans]


def merge_windows(windows: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The union of closed intervals, as disjoint intervals in order."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def affected_range(times: Iterable[datetime], rules: Rules) -> tuple[datetime, datetime]:
    """The right ends whose hits may change when attempts appear (or move) at `times`."""
    ts = list(times)
    return min(ts), max(ts) + rules.reach


def detect(attempts: Iterable[Attempt], rules: Rules | None = None) -> list[Flag]:
    """Batch detection: every flag of every entity, in a deterministic order."""
    rules = rules or Rules()
    flags: list[Flag] = []
    for (kind, value), points in points_by_entity(attempts).items():
        if rules.allows(kind, value):
            continue
        for pattern in rules.patterns(kind):
            rule = rules.rule(kind, pattern)
            if len(points) < rule.minimum(pattern):
                continue
            for w in detect_windows(points, pattern, rule):
                flags.append(
                    Flag(
                        kind,
                        value,
                        pattern,
                        w.start,
                        w.end,
                        w.failures,
                        w.distinct_cards,
                        w.attempt_ids,
                    )
                )
    return sorted(flags)


@dataclass(frozen=True)
class Stored:
    """A stored flag as reconciliation sees it."""

    id: int
    start: datetime
    end: datetime
    failures: int
    status: str
    distinct_cards: int = 0


@dataclass
class Plan:
    """What to write so that the stored flags equal the recomputed windows."""

    insert: list[Window] = field(default_factory=list)
    update: list[tuple[int, Window, str]] = field(default_factory=list)  # id, window, status
    delete: list[int] = field(default_factory=list)
    keep: list[tuple[int, Window]] = field(default_factory=list)  # stored flags left as they are

    @property
    def empty(self) -> bool:
        return not (self.insert or self.update or self.delete)


def merged_status(statuses: Sequence[str], grew: bool) -> str:
    """Review state of a flag that absorbed `statuses`: a confirmed attack stays confirmed; a
    dismissed flag that gains failures is new evidence, so it is reviewed again."""
    if "confirmed" in statuses:
        return "confirmed"
    if "open" in statuses or grew:
        return "open"
    return "dismissed"


def reconcile(
    stored: Sequence[Stored], windows: Sequence[Window], *, keep_reviewed: bool = False
) -> Plan:
    """Replace `stored` (every stored flag in the recomputed range) by `windows`. Each window
    keeps the oldest overlapping stored flag (its id and review), the rest are removed. With
    `keep_reviewed` (after a rule change), a reviewed flag no window supports any more stays as
    the record of a decision; only open flags disappear."""
    plan = Plan()
    used: set[int] = set()
    for w in windows:
        matched = sorted(
            (s for s in stored if s.id not in used and s.start <= w.end and w.start <= s.end),
            key=lambda s: s.id,
        )
        if not matched:
            plan.insert.append(w)
            continue
        used.update(s.id for s in matched)
        keep, absorbed = matched[0], matched[1:]
        grew = w.failures > max(s.failures for s in matched)
        status = merged_status([s.status for s in matched], grew)
        changed = (keep.start, keep.end, keep.failures, keep.distinct_cards, keep.status) != (
            w.start,
            w.end,
            w.failures,
            w.distinct_cards,
            status,
        )
        if changed or absorbed:
            plan.update.append((keep.id, w, status))
        else:
            plan.keep.append((keep.id, w))
        plan.delete.extend(s.id for s in absorbed)
    plan.delete.extend(
        s.id for s in stored if s.id not in used and not (keep_reviewed and s.status != "open")
    )
    return plan


def components(members: Mapping[K, Iterable[str]]) -> list[list[K]]:
    """Incidents: the keys (flags) grouped by shared members (attempt ids), transitively.
    A function of the sets alone, so any order of arrival gives the same groups; each group
    sorted, groups ordered by their first key."""
    parent: dict[K, K] = {}

    def find(x: K) -> K:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    owner: dict[str, K] = {}
    for key, attempt_ids in members.items():
        parent.setdefault(key, key)
        for attempt_id in attempt_ids:
            other = owner.setdefault(attempt_id, key)
            a, b = find(key), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[K, list[K]] = {}
    for key in parent:
        groups.setdefault(find(key), []).append(key)
    return sorted(sorted(g) for g in groups.values())
