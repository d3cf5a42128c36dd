"""Live reads and operator actions: what the Stripe-backed pages and the Risk page show and do.

Never cached: these pages act on money and must show Stripe's and the database's current state.
Stripe's errors and database outages become messages (`dashboard.guard.shown`), the stand-in is
labelled, emails are masked for roles without `emails.view_full`. Pages call these functions;
they hold no SQL and make no Stripe call themselves."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from core.auth import manage
from core.auth.permissions import Actor, PermissionDenied, allowed, mask_email, require
from core.auth.users import UsersError
from core.console import (
    erasure,
    fulfillment,
    jobs,
    promotions,
    reconcile,
    replay,
    retention,
)
from core.console import promotion_health as code_health
from core.console.fulfillment import ManualOutcome as ManualOutcome  # the pages show it
from core.console.promotions import NewPromotionCode
from core.console.stripe_api import (
    StripeApi,
    StripeProblem,
    client_from_settings,
    new_token,
)
from core.db import get_engine, session_scope
from core.models import PaymentAttempt, RiskFlag, RiskIncident
from core.money import CURRENCIES, format_minor, plain_major, to_major
from core.risk import backtest, reviews
from core.risk import rules as risk_rules
from core.risk.backtest import Backtest, FlagKey
from core.risk.detector import Filter, Rules
from core.risk.rules import RulesError, build, make_filter
from core.runtime import webhook_context
from core.settings import Settings, get_settings
from dashboard import data
from dashboard.guard import shown
from dashboard.safe import md, mono, safe_frame

STANDIN_NOTICE = (
    "Stripe stand-in: this console is talking to a local imitation of Stripe "
    "(offline demo), not to a real Stripe account. Nothing here moves real money."
)
_client: tuple[Settings, StripeApi] | None = None


def client() -> StripeApi:
    """The Stripe client for the current settings (rebuilt when the settings change)."""
    global _client
    settings = get_settings()
    if _client is None or _client[0] is not settings:
        _client = (settings, client_from_settings(settings))
    return _client[1]


def form_token(name: str) -> str:
    """The token of the form `name`: kept across reruns (a double click or a rerun is the
    same action), replaced by `next_action` once the action is done."""
    key = f"_action_token_{name}"
    if key not in st.session_state:
        st.session_state[key] = new_token()
    return str(st.session_state[key])


def next_action(name: str) -> None:
    st.session_state[f"_action_token_{name}"] = new_token()


@shown
def standin_notice() -> None:
    """Say plainly when the Stripe data comes from the offline stand-in."""
    if client().is_standin:
        st.warning(STANDIN_NOTICE, icon=":material/science:")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "–"


# --- Promotion codes ----------------------------------------------------------------------------


@shown
def promotion_codes(actor: Actor) -> list[promotions.PromotionCodeView]:
    return promotions.list_promotion_codes(client(), actor)


def _count(value: int | None, none: str = "–") -> str:
    """A count from Stripe as text: any integer renders (a 20-digit redemption limit
    overflowed the table's int64 column and crashed the page)."""
    return none if value is None else f"{value:,}"


def codes_table(codes: list[promotions.PromotionCodeView]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "code": c.code,
                "active": c.active,
                "terms": c.coupon.describe() if c.coupon else "–",
                "redeemed": _count(c.times_redeemed),
                "limit": _count(c.max_redemptions, "none"),
                "expires (UTC)": _when(c.expires_at),
                "restrictions": c.restrictions,
                "id": c.id,
            }
            for c in codes
        ],
        columns=["code", "active", "terms", "redeemed", "limit", "expires (UTC)",
                 "restrictions", "id"],
    )  # fmt: skip


@shown
def promotion_health(actor: Actor, codes: list[promotions.PromotionCodeView], days: int = 30) -> (
    tuple[pd.DataFrame, pd.DataFrame, list[code_health.CodeWarning]]
):  # fmt: skip
    """Redemptions per day, usage per code (with failed attempts and disputes), watch list."""
    require(actor, "promotions.view")
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    with session_scope(get_engine(), write=False) as session:
        daily = code_health.daily_redemptions(session, since)
        usage = code_health.code_usage(session, since)
    label = {c.id: c.code for c in codes}
    per_day = pd.DataFrame(
        [{"day": d, "code": label.get(c, c), "redemptions": n} for d, c, n in daily],
        columns=["day", "code", "redemptions"],
    )
    per_code = pd.DataFrame(
        [
            {
                "code": label.get(u.code, u.code),
                "paid orders": u.paid_orders,
                "failed attempts": u.failed_attempts,
                "disputed": u.disputed_orders,
                "refunded": u.refunded_orders,
                "last used (UTC)": _when(u.last_used),
            }
            for u in usage.values()
        ],
        columns=["code", "paid orders", "failed attempts", "disputed", "refunded",
                 "last used (UTC)"],
    ).sort_values("paid orders", ascending=False)  # fmt: skip
    return per_day, per_code, code_health.watch_list(codes, now)


def currencies() -> list[str]:
    """The currencies a promotion's amounts may be in (Stripe's), for a picker."""
    return sorted(CURRENCIES)


def check_promotion(form: dict[str, Any]) -> tuple[NewPromotionCode | None, dict[str, str]]:
    """The code the form describes, or each field's problem (nothing is sent meanwhile)."""
    try:
        return NewPromotionCode.parse(form, now=datetime.now(UTC)), {}
    except promotions.InvalidPromotion as invalid:
        return None, invalid.fields


def create_code(actor: Actor, new: NewPromotionCode) -> tuple[bool, str]:
    """Create the code (keyed by this form's token: a repeat does nothing); (ok, message
    naming what was created)."""
    token = form_token("promo_create")
    try:
        result = promotions.create_promotion_code(get_engine(), client(), actor, new, token)
    except StripeProblem as problem:
        return False, problem.message
    next_action("promo_create")
    done = " (it had already been created)" if result.already_done else ""
    return True, f"Created promotion code {new.code} ({result.result_id}){done}: {new.describe()}."


def set_code_active(actor: Actor, code_id: str, code: str, active: bool) -> tuple[bool, str]:
    """Deactivate or reactivate the code `code_id` (shown as `code`); (ok, message naming it)."""
    name = f"promo_active_{code_id}_{active}"
    try:
        result = promotions.set_active(
            get_engine(), client(), actor, code_id, active, form_token(name)
        )
    except (StripeProblem, promotions.InvalidPromotion) as problem:
        return False, str(problem)
    next_action(name)
    verb = "Reactivated" if active else "Deactivated"
    done = " (already done)" if result.already_done else ""
    return True, f"{verb} promotion code {code} ({code_id}){done}."


# --- Manual fulfillment -------------------------------------------------------------------------


@shown
def awaiting_orders(actor: Actor) -> pd.DataFrame:
    require(actor, "fulfillment.request")
    full = allowed(actor.role, "emails.view_full")
    with session_scope(get_engine(), write=False) as session:
        rows = fulfillment.awaiting_fulfillment(session)
    return pd.DataFrame(
        [
            {
                "order": o.id,
                "checkout session": o.checkout_session_id,
                "email": o.customer_email if full else mask_email(o.customer_email),
                "amount": format_minor(o.amount_total, o.currency),
                "paid (UTC)": _when(o.paid_at),
            }
            for o in rows
        ],
        columns=["order", "checkout session", "email", "amount", "paid (UTC)"],
    )


@shown
def requests(actor: Actor, *, pending_only: bool) -> list[fulfillment.RequestView]:
    require(actor, "fulfillment.request")
    with session_scope(get_engine(), write=False) as session:
        return fulfillment.fulfillment_requests(session, pending_only=pending_only)


def request_fulfillment(
    actor: Actor, order_id: int, reason: str, confirmation: str
) -> ManualOutcome:
    return fulfillment.request_manual_fulfillment(
        get_engine(), actor, order_id, reason, confirmation
    )


def approve(actor: Actor, request_id: int, confirmation: str) -> ManualOutcome:
    return fulfillment.approve_request(
        get_engine(),
        client(),
        actor,
        request_id,
        confirmation,
        fulfiller=webhook_context(get_settings()).fulfiller,
    )


def reject(actor: Actor, request_id: int, note: str) -> ManualOutcome:
    return fulfillment.reject_request(get_engine(), actor, request_id, note)


def perform(actor: Actor, order_id: int, reason: str, confirmation: str) -> ManualOutcome:
    return fulfillment.perform_manual_fulfillment(
        get_engine(),
        client(),
        actor,
        order_id,
        reason,
        confirmation,
        fulfiller=webhook_context(get_settings()).fulfiller,
    )


# --- Reconcile and replay -----------------------------------------------------------------------


def start_reconcile(actor: Actor, days: int) -> tuple[bool, str]:
    """Start a reconciliation in the background, once: the lock in the database makes every
    other session (and the CLI) wait, and this form's token makes a repeated click of the same
    request do nothing. (started or already running for this request, message)."""
    token = form_token("reconcile")
    settings = get_settings()
    engine = get_engine()
    try:
        stripe = client()
        claimed = reconcile.start(engine, actor, token, days=days)
    except (StripeProblem, reconcile.ReconcileBusy, PermissionDenied) as problem:
        return False, getattr(problem, "message", None) or str(problem)
    next_action("reconcile")
    if claimed == "already":
        return True, "This reconciliation was already started; it runs once."
    threading.Thread(
        target=reconcile.run_claimed,
        args=(engine, stripe, webhook_context(settings), actor, token),
        kwargs={"days": days},
        name=f"reconcile-{token[:8]}",
        daemon=True,
    ).start()
    return True, f"Reconciliation of the last {days} days started."


@shown
def reconcile_state(actor: Actor) -> jobs.JobState | None:
    """The reconciliation job as every session sees it: running (with progress) or its last
    report."""
    require(actor, "events.replay")
    return jobs.state(get_engine(), reconcile.JOB)


def run_replay(actor: Actor, event_id: str, *, dry_run: bool) -> replay.ReplayResult | str:
    """The replay result, or a message when there is no such event."""
    try:
        return replay.replay(
            get_engine(), webhook_context(get_settings()), actor, event_id, dry_run=dry_run
        )
    except LookupError as missing:
        return str(missing)


def changes_table(result: replay.ReplayResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"table": c.table, "row": c.key, "change": c.kind, "column": column,
             "before": str(before), "after": str(after)}
            for c in result.changes
            for column, (before, after) in c.fields.items()
        ],
        columns=["table", "row", "change", "column", "before", "after"],
    )  # fmt: skip


@shown
def failed_events(actor: Actor) -> pd.DataFrame:
    require(actor, "events.replay")
    with session_scope(get_engine(), write=False) as session:
        rows = replay.recent_failures(session)
        return pd.DataFrame(
            [
                {"event": e.id, "type": e.type, "created (UTC)": _when(e.created),
                 "deliveries": e.deliveries, "error": e.last_error}
                for e in rows
            ],
            columns=["event", "type", "created (UTC)", "deliveries", "error"],
        )  # fmt: skip


# --- Webhook endpoint health (drawn on the Webhooks page) ---------------------------------------


def render_endpoint_health(actor: Actor) -> None:
    """Stripe's endpoints for this account: status, API version against ours, whether their
    enabled events cover everything we handle; and events Stripe is still trying to deliver."""
    st.subheader("Webhook endpoint health")
    try:
        health = reconcile.endpoint_health(client(), actor)
    except StripeProblem as problem:
        st.warning(md("Stripe's view of the endpoints is unavailable: {}", problem.message))
        return
    if health.standin:
        st.caption(STANDIN_NOTICE)
    st.caption(md("Our API version: {}", mono(health.our_version)))
    if not health.endpoints:
        st.error("Stripe has no webhook endpoint for this account: no event reaches us.")
    for endpoint in health.endpoints:
        problems = []
        if endpoint.status != "enabled":
            problems.append(f"status is {endpoint.status}")
        if not endpoint.version_matches:
            problems.append(
                f"API version {endpoint.api_version or 'account default'} differs from ours"
            )
        if endpoint.missing_events:
            problems.append("does not send: " + ", ".join(endpoint.missing_events))
        where = mono(endpoint.url)
        if problems:
            st.warning(
                md("{} ({}): {}", where, endpoint.id, "; ".join(problems)),
                icon=":material/warning:",
            )
        else:
            st.success(
                md(
                    "{} ({}): enabled, our API version, sends every event we handle.",
                    where,
                    endpoint.id,
                )
            )
    if health.pending:
        st.warning(f"{len(health.pending)} event(s) still waiting for delivery to an endpoint.")
        st.dataframe(
            safe_frame(
                [
                    {"event": p.id, "type": p.type, "created (UTC)": _when(p.created),
                     "pending endpoints": p.pending_webhooks}
                    for p in health.pending
                ]
            ),
            hide_index=True,
            key="endpoint_pending",
        )  # fmt: skip
    else:
        st.caption("No event is waiting for delivery (last 3 days).")


# --- Risk ---------------------------------------------------------------------------------------


PATTERN_LABELS = {"burst": "Burst of failures", "card_testing": "Card testing"}
KIND_LABELS = {
    "card": "Card",
    "customer": "Customer",
    "email": "Email",
    "ip": "IP address",
    "promotion_code": "Promotion code",
}


@dataclass(frozen=True)
class FlagView:
    id: int
    kind: str
    entity: str  # as this actor may see it
    pattern: str
    window_start: datetime
    window_end: datetime
    failures: int
    distinct_cards: int
    status: str
    reviewed_by: str | None
    note: str | None

    @property
    def label(self) -> str:
        return (
            f"#{self.id} · {PATTERN_LABELS.get(self.pattern, self.pattern)} · "
            f"{KIND_LABELS.get(self.kind, self.kind)} {self.entity} · {self.failures} failures · "
            f"{self.window_start:%Y-%m-%d %H:%M}–{self.window_end:%H:%M} UTC"
        )


@dataclass(frozen=True)
class FlagDetail:
    flag: FlagView
    attempts: pd.DataFrame  # the failed attempts behind the flag
    timeline: pd.DataFrame  # every attempt of the entity around the window
    order_ids: list[int]


def _view(flag: RiskFlag, actor: Actor) -> FlagView:
    return FlagView(
        flag.id,
        flag.entity_kind,
        reviews.display_value(flag.entity_kind, flag.entity_value, actor),
        flag.pattern,
        flag.window_start,
        flag.window_end,
        flag.failures,
        flag.distinct_cards,
        flag.status,
        flag.reviewed_by,
        flag.note,
    )


def _attempts_frame(rows: list[PaymentAttempt], actor: Actor) -> pd.DataFrame:
    full = allowed(actor.role, "emails.view_full")
    return pd.DataFrame(
        [
            {
                "time (UTC)": a.created,
                "attempt": a.id,
                "outcome": a.outcome,
                "decline": a.decline_code or a.failure_code,
                "card": f"{a.card_brand or ''} •••• {a.card_last4}" if a.card_last4 else None,
                "fingerprint": a.card_fingerprint,
                "amount": to_major(a.amount, a.currency) if a.currency else None,
                "currency": (a.currency or "").upper() or None,
                "email": a.email if full else mask_email(a.email),
                "ip": a.ip_address,
                "order": a.order_id,
            }
            for a in rows
        ],
        columns=[
            "time (UTC)",
            "attempt",
            "outcome",
            "decline",
            "card",
            "fingerprint",
            "amount",
            "currency",
            "email",
            "ip",
            "order",
        ],
    )


@shown
def flags(actor: Actor, status: str | None = "open") -> list[FlagView]:
    require(actor, "risk.review")
    with session_scope(get_engine(), write=False) as session:
        return [_view(f, actor) for f in reviews.list_flags(session, status)]


@shown
def detail(actor: Actor, flag_id: int) -> FlagDetail | None:
    require(actor, "risk.review")
    with session_scope(get_engine(), write=False) as session:
        flag = session.get(RiskFlag, flag_id)
        if flag is None:
            return None
        behind = reviews.flag_attempts(session, flag)
        around = reviews.entity_timeline(session, flag)
        orders = sorted({a.order_id for a in behind if a.order_id is not None})
        return FlagDetail(
            _view(flag, actor),
            _attempts_frame(behind, actor),
            _attempts_frame(around, actor),
            orders,
        )


@shown
def review(actor: Actor, flag_id: int, decision: reviews.Decision, note: str) -> tuple[bool, str]:
    """Apply the review; (ok, message to show)."""
    try:
        with session_scope(get_engine()) as session:
            flag = reviews.review(session, actor, flag_id, decision, note)
            status = flag.status
    except (PermissionDenied, reviews.ReviewError) as exc:
        return False, str(exc)
    data.clear()  # the Overview's open-flag count changes
    return True, f"Flag #{flag_id} {status}. The review is in the audit log."


# --- Retention (admins) ------------------------------------------------------------------------


@shown
def retention_status(actor: Actor) -> tuple[retention.Policy, retention.LastRun | None] | None:
    """The retention policy and its last applied run; None for anyone but an admin."""
    if not allowed(actor.role, "audit.view"):
        return None
    with session_scope(get_engine(), write=False) as session:
        return retention.Policy.of(get_settings()), retention.last_run(session, actor)


# --- Risk incidents and rules (issue 14) -------------------------------------------------------


@dataclass(frozen=True)
class IncidentView:
    id: int
    status: str
    first_seen: datetime
    last_seen: datetime
    flags: int
    entities: list[str]  # "Kind: value" as this actor may see them
    reviewed_by: str | None
    note: str | None

    @property
    def label(self) -> str:
        shown = ", ".join(self.entities[:3]) + (" …" if len(self.entities) > 3 else "")
        return (
            f"#{self.id} · {shown} · {self.flags} flags · "
            f"{self.first_seen:%Y-%m-%d %H:%M}–{self.last_seen:%H:%M} UTC"
        )


@dataclass(frozen=True)
class IncidentDetail:
    incident: IncidentView
    flags: list[FlagView]
    attempts: pd.DataFrame  # the failed attempts behind any of its flags, once each
    timeline: pd.DataFrame  # every attempt of its entities around the incident
    amounts: dict[str, str]  # currency -> total failed amount, formatted
    cards: int
    order_ids: list[int]

    @property
    def flag_ids(self) -> frozenset[int]:
        return frozenset(f.id for f in self.flags)


def _entity_label(kind: str, value: str, actor: Actor) -> str:
    return f"{KIND_LABELS.get(kind, kind)}: {reviews.display_value(kind, value, actor)}"


def _incident_view(incident: RiskIncident, flags: list[RiskFlag], actor: Actor) -> IncidentView:
    entities = sorted({_entity_label(f.entity_kind, f.entity_value, actor) for f in flags})
    return IncidentView(
        incident.id,
        incident.status,
        incident.first_seen,
        incident.last_seen,
        incident.flags,
        entities,
        incident.reviewed_by,
        incident.note,
    )


@shown
def incidents(actor: Actor, status: str | None = "open") -> list[IncidentView]:
    require(actor, "risk.review")
    with session_scope(get_engine(), write=False) as session:
        return [
            _incident_view(i, reviews.incident_flags(session, i.id), actor)
            for i in reviews.list_incidents(session, status)
        ]


@shown
def incident_detail(actor: Actor, incident_id: int) -> IncidentDetail | None:
    require(actor, "risk.review")
    with session_scope(get_engine(), write=False) as session:
        incident = session.get(RiskIncident, incident_id)
        if incident is None:
            return None
        flags = reviews.incident_flags(session, incident_id)
        behind = reviews.incident_attempts(session, flags)
        around: dict[str, PaymentAttempt] = {}
        for flag in flags:
            for a in reviews.entity_timeline(session, flag):
                around.setdefault(a.id, a)
        totals: dict[str, int] = {}
        for a in behind:
            if a.currency:
                totals[a.currency] = totals.get(a.currency, 0) + a.amount
        return IncidentDetail(
            _incident_view(incident, flags, actor),
            [_view(f, actor) for f in flags],
            _attempts_frame(behind, actor),
            _attempts_frame(sorted(around.values(), key=lambda a: (a.created, a.id)), actor),
            {c.upper(): format_minor(v, c) for c, v in sorted(totals.items())},
            len({a.card_fingerprint for a in behind if a.card_fingerprint}),
            sorted({a.order_id for a in behind if a.order_id is not None}),
        )


@shown
def review_incident(
    actor: Actor,
    incident_id: int,
    decision: reviews.Decision,
    note: str,
    seen_flags: frozenset[int],
) -> tuple[bool, str]:
    """Apply the review to incident `incident_id` (the one shown); (ok, message to show)."""
    try:
        with session_scope(get_engine()) as session:
            incident, changed = reviews.review_incident(
                session, actor, incident_id, decision, note, seen_flags
            )
            status = incident.status
    except (PermissionDenied, reviews.ReviewError) as exc:
        return False, str(exc)
    data.clear()  # the Overview's open counts change
    if not changed:
        return True, f"Incident #{incident_id} was already {status} by you: nothing changed."
    return True, (
        f"Incident #{incident_id} {status} with its {len(seen_flags)} flags. "
        "The review is in the audit log."
    )


CURRENCY_CODES = sorted(c.upper() for c in CURRENCIES)
RULE_COLUMNS = [
    "entity",
    "pattern",
    "threshold (failures)",
    "window (minutes)",
    "only currency",
    "only from amount",
    "only decline codes",
]


@dataclass(frozen=True)
class RulesState:
    version: int  # 0: the defaults (BURST_THRESHOLD / BURST_WINDOW_MINUTES) are live
    table: pd.DataFrame
    allow: str  # one "kind: value" per line


def _cell(value: Any) -> str:
    """A text cell of the rules table as typed ("" for a cleared cell)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _rule_row(kind: str, pattern: str, threshold: int, minutes: int, counted: Filter) -> list[Any]:
    amount = plain_major(counted.min_amount, counted.currency) if counted.min_amount else ""
    return [
        kind,
        pattern,
        threshold,
        minutes,
        counted.currency.upper(),
        amount,
        ", ".join(counted.decline_codes),
    ]


def _parse_rules(table: pd.DataFrame, allow: str) -> Rules:
    rows = []
    for _i, r in table.iterrows():
        kind, pattern = str(r.iloc[0]), str(r.iloc[1])
        try:
            counted = make_filter(_cell(r.iloc[4]), _cell(r.iloc[5]), _cell(r.iloc[6]))
        except RulesError as exc:
            raise RulesError(f"{kind} / {pattern}: {exc}") from None
        threshold, minutes = _cell(r.iloc[2]), _cell(r.iloc[3])
        if not (threshold and minutes):
            raise RulesError(f"{kind} / {pattern}: a threshold and a window are required.")
        rows.append((kind, pattern, int(float(threshold)), int(float(minutes)), counted))
    entries = []
    for line in allow.splitlines():
        if line.strip():
            kind, sep, value = line.partition(":")
            if not sep:
                raise RulesError(f"Allow list line {line.strip()!r}: write it as kind: value.")
            entries.append((kind.strip(), value.strip()))
    return build(rows, entries)


@shown
def rules_state(actor: Actor) -> RulesState:
    require(actor, "risk.rules")
    with session_scope(get_engine(), write=False) as session:
        version, live_rules = risk_rules.live(session, get_settings())
    table = pd.DataFrame(
        [_rule_row(*row) for row in risk_rules.rule_table(live_rules)], columns=RULE_COLUMNS
    )
    allow = "\n".join(f"{k}: {v}" for k, v in sorted(live_rules.allow))
    return RulesState(version, table, allow)


@shown
def run_backtest(
    actor: Actor, table: pd.DataFrame, allow: str, since: datetime, until: datetime
) -> Backtest | str:
    """The backtest of the edited rules against the live ones (reads only), or what is wrong."""
    require(actor, "risk.rules")
    try:
        proposed = _parse_rules(table, allow)
    except (RulesError, ValueError) as exc:
        return str(exc)
    with session_scope(get_engine(), write=False) as session:
        _version, current = risk_rules.live(session, get_settings())
        return backtest.backtest(session, current, proposed, since, until)


def flag_rows(keys: list[FlagKey], actor: Actor) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "entity": _entity_label(k, v, actor),
                "pattern": PATTERN_LABELS.get(p, p),
                "from (UTC)": f"{a:%Y-%m-%d %H:%M}",
                "to (UTC)": f"{b:%Y-%m-%d %H:%M}",
            }
            for k, v, p, a, b in keys
        ],
        columns=["entity", "pattern", "from (UTC)", "to (UTC)"],
    )


@shown
def save_rules(
    actor: Actor, table: pd.DataFrame, allow: str, note: str, base_version: int
) -> tuple[bool, str]:
    """Save the edited rules as a new version (the one edited must still be live)."""
    try:
        proposed = _parse_rules(table, allow)
        with session_scope(get_engine()) as session:
            saved = backtest.save(session, actor, get_settings(), proposed, note, base_version)
    except (PermissionDenied, RulesError, ValueError) as exc:
        return False, str(exc)
    data.clear()
    if not saved.changed:
        return True, f"These rules are already live (version {saved.version}): nothing changed."
    counts = saved.result.changes if saved.result else None
    what = (
        f" Flags re-derived: {len(counts.created)} new, {len(counts.updated)} updated, "
        f"{len(counts.removed)} removed."
        if counts
        else ""
    )
    return True, f"Rules version {saved.version} saved and live.{what} The change is audited."


# --- Users (admin) and erasure (issue 12 part B) ----------------------------------------------
# Every action checks `users.manage` / `personal_data.erase` again in core and is audited.


@shown
def users_table(actor: Actor) -> pd.DataFrame:
    """Every user with role, last login, failed logins, lock state and live sessions."""
    with session_scope(get_engine(), write=False) as session:
        rows = manage.list_users(session, actor, get_settings().auth_config)
    return pd.DataFrame(
        [
            {
                "username": r.username,
                "name": r.name,
                "role": r.role,
                "last login (UTC)": _when(r.last_login),
                "failed logins (1 h)": r.failed_logins,
                "locked": "yes" if r.locked else "no",
                "live sessions": r.live_sessions,
                "must change password": "yes" if r.must_change_password else "no",
            }
            for r in rows
        ],
        columns=["username", "name", "role", "last login (UTC)", "failed logins (1 h)",
                 "locked", "live sessions", "must change password"],
    )  # fmt: skip


def _user_action(run: Any) -> tuple[bool, str, Any]:
    """Run one audited change in a write transaction; (ok, error message, result)."""
    try:
        with session_scope(get_engine()) as session:
            result = run(session)
    except (PermissionDenied, UsersError) as exc:
        return False, str(exc), None
    data.clear()
    return True, "", result


def unlock_user(actor: Actor, username: str) -> tuple[bool, str]:
    path = get_settings().auth_config
    ok, error, cleared = _user_action(lambda s: manage.unlock(s, actor, path, username))
    return ok, error or f"Unlocked {username}: {cleared} failed login(s) cleared."


def revoke_user_sessions(actor: Actor, username: str, confirmation: str) -> tuple[bool, str]:
    if confirmation.strip().lower() != username:
        return False, f"Type the username ({username}) to confirm."
    path = get_settings().auth_config
    ok, error, ended = _user_action(lambda s: manage.revoke(s, actor, path, username))
    return ok, error or f"Ended {ended} live session(s) of {username}."


def change_user_role(actor: Actor, username: str, role: str, confirmation: str) -> tuple[bool, str]:
    if confirmation.strip().lower() != username:
        return False, f"Type the username ({username}) to confirm."
    path = get_settings().auth_config
    ok, error, ended = _user_action(lambda s: manage.set_role(s, actor, path, username, role))
    return ok, error or f"{username} is now {role}; {ended} live session(s) ended."


def add_user(actor: Actor, username: str, role: str, name: str) -> tuple[bool, str, str | None]:
    """(ok, message, the one-time password to show once)."""
    path = get_settings().auth_config
    ok, error, password = _user_action(lambda s: manage.add(s, actor, path, username, role, name))
    if not ok:
        return False, error, None
    return True, f"Added {username.strip().lower()} ({role}).", password


def erase_person(actor: Actor, who: str, reason: str, *, apply: bool) -> tuple[bool, str]:
    """Erasure request by email or cus_ id: the dry run's or the erasure's report."""
    who = who.strip()
    kind = {"customer": who} if who.startswith("cus_") else {"email": who}
    try:
        with session_scope(get_engine(), write=apply) as session:
            report = erasure.erase(session, actor, reason=reason, apply=apply, **kind)
    except (PermissionDenied, erasure.ErasureError) as exc:
        return False, str(exc)
    if apply:
        data.clear()
    return True, report.describe()
