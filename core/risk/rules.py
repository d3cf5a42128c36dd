"""The rule set finance tunes: versioned in risk_rule_sets (the highest version is live),
read here (also on the webhook path, so no pandas); saving and backtesting are in
core.risk.backtest.

Without a saved version the live rules are the seed: BURST_THRESHOLD failures within
BURST_WINDOW_MINUTES for every entity kind (the settings stay the seed), except promotion
codes. A promotion code is shared by every buyer who uses it (in the demo about one order in
seven carries one of five codes), so ordinary declines of unrelated buyers add up on it: at 4
an hour the demo's busy codes dominate the list; 12 an hour keeps a real run on a code while
leaving ordinary traffic out."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import money
from core.db import Prepared, raw
from core.models import RiskRuleSet
from core.risk.detector import (
    ENTITY_COLUMNS,
    MAX_DECLINE_CODES,
    NO_FILTER,
    PATTERNS,
    Filter,
    Rules,
)
from core.risk.flags import rules_from
from core.settings import Settings

MAX_WINDOW = timedelta(days=7)


class RulesError(Exception):
    """A rule set that cannot be saved; the message is safe to show."""


def seed(settings: Settings) -> Rules:
    """The default rule set (no version saved yet)."""
    return rules_from(settings)


Row = tuple[str, str, int, int, Filter]  # kind, pattern, threshold, window minutes, filter
_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


def rule_table(rules: Rules) -> list[Row]:
    """Every (kind, pattern) with its threshold, window in minutes and filter, as the page
    shows it."""
    rows: list[Row] = []
    for kind in ENTITY_COLUMNS:
        for pattern in rules.patterns(kind):
            r = rules.rule(kind, pattern)
            minutes = int(r.window.total_seconds() // 60)
            rows.append((kind, pattern, r.minimum(pattern), minutes, r.filter))
    return rows


def make_filter(currency: str = "", min_amount: str = "", decline_codes: str = "") -> Filter:
    """A filter from what an admin typed: a currency code, a minimum amount in its major units
    ("50" or "49.99"), decline codes separated by commas or spaces; blanks filter nothing."""
    code = ""
    if currency.strip():
        try:
            code = money.stripe_currency(currency)
        except money.MoneyError as exc:
            raise RulesError(f"Filter currency: {exc}") from None
    minor = 0
    if min_amount.strip():
        if not code:
            raise RulesError(
                "A minimum amount needs a currency (amounts in different currencies do not "
                "compare)."
            )
        try:
            minor = money.to_minor(min_amount, code)
        except money.MoneyError as exc:
            raise RulesError(f"Filter minimum amount: {exc}") from None
    codes = tuple(sorted({c for c in re.split(r"[\s,]+", decline_codes.strip().lower()) if c}))
    return check_filter(Filter(code, minor, codes))


def check_filter(counted: Filter) -> Filter:
    """`counted` if it can be saved, else RulesError saying why."""
    if counted.currency and counted.currency not in money.CURRENCIES:
        raise RulesError(f"Filter currency {counted.currency.upper()!r} is not a Stripe currency.")
    if not 0 <= counted.min_amount <= money.MAX_AMOUNT_MINOR:
        raise RulesError("A filter's minimum amount is between 0 and Stripe's limit.")
    if len(counted.decline_codes) > MAX_DECLINE_CODES:
        raise RulesError(f"A filter takes at most {MAX_DECLINE_CODES} decline codes.")
    for code in counted.decline_codes:
        if not _CODE.match(code):
            raise RulesError(
                f"Decline code {code[:70]!r}: Stripe's codes are lower-case letters, digits and "
                "underscores, such as insufficient_funds."
            )
    if list(counted.decline_codes) != sorted(set(counted.decline_codes)):
        raise RulesError("Decline codes are listed once each, in order.")
    return counted


def build(
    table: Sequence[tuple[str, str, int, int] | Row], allow: Sequence[tuple[str, str]]
) -> Rules:
    """A rule set from a full table of (kind, pattern, threshold, window minutes[, filter]) and
    an allow list; refuses unknown kinds or patterns and nonsense values."""
    overrides = []
    for kind, pattern, threshold, minutes, *rest in table:
        if kind not in ENTITY_COLUMNS or pattern not in PATTERNS:
            raise RulesError(f"Unknown rule: {kind} / {pattern}.")
        if pattern == "card_testing" and pattern not in Rules().patterns(kind):
            raise RulesError(f"Card testing does not apply to {kind}.")
        if not 1 <= int(threshold) <= 10_000:
            raise RulesError("A threshold is between 1 and 10000 failures.")
        if not timedelta(minutes=1) <= timedelta(minutes=int(minutes)) <= MAX_WINDOW:
            raise RulesError("A window is between 1 minute and 7 days.")
        counted = check_filter(rest[0]) if rest else NO_FILTER
        overrides.append((kind, pattern, int(threshold), timedelta(minutes=int(minutes)), counted))
    for kind, value in allow:
        if kind not in ENTITY_COLUMNS or not value.strip():
            raise RulesError(f"Allow list: {kind!r} is not an entity kind, or the value is empty.")
    return Rules(
        overrides=tuple(sorted(overrides)),
        allow=frozenset((k, v.strip()) for k, v in allow),
    )


def _rule_body(
    kind: str, pattern: str, threshold: int, minutes: int, counted: Filter
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "pattern": pattern, "threshold": threshold}
    body["window_minutes"] = minutes
    if counted.currency:
        body["currency"] = counted.currency
    if counted.min_amount:
        body["min_amount"] = counted.min_amount  # minor units of the currency
    if counted.decline_codes:
        body["decline_codes"] = list(counted.decline_codes)
    return body


def to_body(rules: Rules) -> dict[str, Any]:
    """As stored in risk_rule_sets.body (a filter's keys only when set: versions saved before
    filters existed read the same)."""
    return {
        "rules": [_rule_body(*row) for row in rule_table(rules)],
        "allow": sorted([k, v] for k, v in rules.allow),
    }


def from_body(body: dict[str, Any]) -> Rules:
    def counted(r: dict[str, Any]) -> Filter:
        try:
            return Filter(
                str(r.get("currency", "")),
                int(r.get("min_amount", 0)),
                tuple(str(c) for c in r.get("decline_codes", ())),
            )
        except ValueError as exc:
            raise RulesError(f"Stored filter: {exc}") from None

    return build(
        [
            (r["kind"], r["pattern"], r["threshold"], r["window_minutes"], counted(r))
            for r in body["rules"]
        ],
        [(k, v) for k, v in body.get("allow", [])],
    )


def describe_filter(counted: Filter) -> str:
    """A filter in words, for pages and audit readers: "" when it counts every failure."""
    parts = []
    if counted.currency:
        parts.append(
            f"at least {money.format_minor(counted.min_amount, counted.currency)}"
            if counted.min_amount
            else f"in {counted.currency.upper()}"
        )
    if counted.decline_codes:
        parts.append("declined " + ", ".join(counted.decline_codes))
    return "; ".join(parts)


def live_version(session: Session) -> int:
    """The live version number; 0 while the seed is live."""
    return int(session.execute(select(func.max(RiskRuleSet.version))).scalar_one() or 0)


_LIVE_VERSION = Prepared(select(func.max(RiskRuleSet.version)))  # the webhook path's


def live(session: Session, settings: Settings) -> tuple[int, Rules]:
    """(version, rules) now live."""
    version = live_version(session)
    if not version:
        return 0, seed(settings)
    row = session.get(RiskRuleSet, version)
    assert row is not None
    return version, from_body(row.body)


def live_loader(settings: Settings) -> Callable[[Session], Rules]:
    """For the webhook path: the live rules, read once per version (one indexed max() per
    failed attempt tells whether an admin saved a new version). That max() is a prepared
    statement on the session's cursor (core.db.Prepared): through the ORM it cost about half a
    millisecond, a fifth of a declined event's whole cost."""
    cache: dict[int, Rules] = {}

    def load(session: Session) -> Rules:
        found = raw(session).first(_LIVE_VERSION, {})
        version = int(found[0] or 0) if found else 0
        if version not in cache:
            cache.clear()
            cache[version] = live(session, settings)[1]
        return cache[version]

    return load
