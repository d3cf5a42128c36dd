"""Live reads and operator actions: what the Stripe-backed pages and the Risk page show and do.

Never cached: these pages act on money and must show Stripe's and the database's current state.
Stripe's errors and database outages become messages (`dashboard.guard.shown`), the stand-in is
labelled, emails are masked for roles without `emails.view_full`. Pages call these functions;
they hold no SQL and make no Stripe call themselves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from core.auth.permissions import Actor, PermissionDenied, allowed, mask_email, require
from core.console import fulfillment, promotions, reconcile
from core.console.fulfillment import ManualOutcome as ManualOutcome  # the pages show it
from core.console.promotions import NewPromotionCode
from core.console.stripe_api import (
    ActionResult,
    StripeApi,
    StripeProblem,
    client_from_settings,
    new_token,
)
from core.db import get_engine, session_scope
from core.models import PaymentAttempt, RiskFlag
from core.money import format_minor, to_major
from core.risk import reviews
from core.runtime import webhook_context
from core.settings import Settings, get_settings
from dashboard import data
from dashboard.guard import shown

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


def codes_table(codes: list[promotions.PromotionCodeView]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "code": c.code,
                "active": c.active,
                "terms": c.coupon.describe() if c.coupon else "–",
                "redeemed": c.times_redeemed,
                "limit": c.max_redemptions,
                "expires (UTC)": _when(c.expires_at),
                "restrictions": c.restrictions,
                "id": c.id,
            }
            for c in codes
        ],
        columns=["code", "active", "terms", "redeemed", "limit", "expires (UTC)",
                 "restrictions", "id"],
    ).astype({"limit": "Int64"})  # fmt: skip


@shown
def promotion_health(actor: Actor, codes: list[promotions.PromotionCodeView], days: int = 30) -> (
    tuple[pd.DataFrame, pd.DataFrame, list[promotions.CodeWarning]]
):  # fmt: skip
    """Redemptions per day, usage per code (with failed attempts and disputes), watch list."""
    require(actor, "promotions.view")
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    with session_scope(get_engine(), write=False) as session:
        daily = promotions.daily_redemptions(session, since)
        usage = promotions.code_usage(session, since)
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
    return per_day, per_code, promotions.watch_list(codes, now)


def create_code(actor: Actor, form: dict[str, Any]) -> tuple[ActionResult | None, list[str]]:
    """Validate, then create; (result, problems). Nothing is sent when there is a problem."""
    try:
        new = NewPromotionCode.parse(form, now=datetime.now(UTC))
    except promotions.InvalidPromotion as invalid:
        return None, invalid.problems
    try:
        result = promotions.create_promotion_code(
            get_engine(), client(), actor, new, form_token("promo_create")
        )
    except StripeProblem as problem:
        return None, [problem.message]
    next_action("promo_create")
    return result, []


def set_code_active(actor: Actor, code_id: str, active: bool) -> tuple[bool, str]:
    name = f"promo_active_{code_id}_{active}"
    try:
        result = promotions.set_active(
            get_engine(), client(), actor, code_id, active, form_token(name)
        )
    except (StripeProblem, promotions.InvalidPromotion) as problem:
        return False, str(problem)
    next_action(name)
    verb = "reactivated" if active else "deactivated"
    return True, f"Promotion code {verb}." + (" (already done)" if result.already_done else "")


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


@shown
def run_reconcile(actor: Actor, days: int) -> reconcile.ReconcileReport:
    settings = get_settings()
    return reconcile.reconcile(get_engine(), client(), webhook_context(settings), actor, days=days)


def run_replay(actor: Actor, event_id: str, *, dry_run: bool) -> reconcile.ReplayResult | str:
    """The replay result, or a message when there is no such event."""
    try:
        return reconcile.replay(
            get_engine(), webhook_context(get_settings()), actor, event_id, dry_run=dry_run
        )
    except LookupError as missing:
        return str(missing)


def changes_table(result: reconcile.ReplayResult) -> pd.DataFrame:
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
        rows = reconcile.recent_failures(session)
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
        st.warning(f"Stripe's view of the endpoints is unavailable: {problem.message}")
        return
    if health.standin:
        st.caption(STANDIN_NOTICE)
    st.caption(f"Our API version: `{health.our_version}`")
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
        text = f"`{endpoint.url}` ({endpoint.id})"
        if problems:
            st.warning(f"{text}: " + "; ".join(problems), icon=":material/warning:")
        else:
            st.success(f"{text}: enabled, our API version, sends every event we handle.")
    if health.pending:
        st.warning(f"{len(health.pending)} event(s) still waiting for delivery to an endpoint.")
        st.dataframe(
            pd.DataFrame(
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
