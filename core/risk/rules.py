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

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import Prepared, raw
from core.models import RiskRuleSet
from core.risk.detector import ENTITY_COLUMNS, PATTERNS, Pattern, Rules
from core.risk.flags import rules_from
from core.settings import Settings

MAX_WINDOW = timedelta(days=7)


class RulesError(Exception):
    """A rule set that cannot be saved; the message is safe to show."""


def seed(settings: Settings) -> Rules:
    """The default rule set (no version saved yet)."""
    return rules_from(settings)


def rule_table(rules: Rules) -> list[tuple[str, Pattern, int, int]]:
    """Every (kind, pattern) with its threshold and window in minutes, as the page shows it."""
    rows: list[tuple[str, Pattern, int, int]] = []
    for kind in ENTITY_COLUMNS:
        for pattern in rules.patterns(kind):
            r = rules.rule(kind, pattern)
            rows.append((kind, pattern, r.minimum(pattern), int(r.window.total_seconds() // 60)))
    return rows


def build(table: Sequence[tuple[str, str, int, int]], allow: Sequence[tuple[str, str]]) -> Rules:
    """A rule set from a full table of (kind, pattern, threshold, window minutes) and an allow
    list; refuses unknown kinds or patterns and nonsense values."""
    overrides = []
    for kind, pattern, threshold, minutes in table:
        if kind not in ENTITY_COLUMNS or pattern not in PATTERNS:
            raise RulesError(f"Unknown rule: {kind} / {pattern}.")
        if pattern == "card_testing" and pattern not in Rules().patterns(kind):
            raise RulesError(f"Card testing does not apply to {kind}.")
        if not 1 <= int(threshold) <= 10_000:
            raise RulesError("A threshold is between 1 and 10000 failures.")
        if not timedelta(minutes=1) <= timedelta(minutes=int(minutes)) <= MAX_WINDOW:
            raise RulesError("A window is between 1 minute and 7 days.")
        overrides.append((kind, pattern, int(threshold), timedelta(minutes=int(minutes))))
    for kind, value in allow:
        if kind not in ENTITY_COLUMNS or not value.strip():
            raise RulesError(f"Allow list: {kind!r} is not an entity kind, or the value is empty.")
    return Rules(
        overrides=tuple(sorted(overrides)),
        allow=frozenset((k, v.strip()) for k, v in allow),
    )


def to_body(rules: Rules) -> dict[str, Any]:
    return {
        "rules": [
            {"kind": k, "pattern": p, "threshold": t, "window_minutes": m}
            for k, p, t, m in rule_table(rules)
        ],
        "allow": sorted([k, v] for k, v in rules.allow),
    }


def from_body(body: dict[str, Any]) -> Rules:
    return build(
        [(r["kind"], r["pattern"], r["threshold"], r["window_minutes"]) for r in body["rules"]],
        [(k, v) for k, v in body.get("allow", [])],
    )


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
