"""Every piece of data the dashboard shows, and the only module with `st.cache_*`.

Each public function checks the actor's permission in core first (the navigation hiding a
page is not the control), then returns a briefly cached result of a read-only query from
core.console. Caches are keyed by database URL and by the exact inputs; emails are masked
after the cache, per actor, so one role's view never leaks into another's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.audit import AuditFilter as AuditFilter  # the pages build filters
from core.auth.permissions import Actor, allowed, mask_email, require
from core.console import alerts, orders, payments, webhooks
from core.console.orders import CustomerSummary, Exact, OrderDetail
from core.console.period import Grain, Period
from core.console.timeline import TimelineEntry, order_timeline
from core.console.webhooks import RetryStats
from core.db import get_engine, session_scope
from core.settings import get_settings
from dashboard.guard import shown
from demo.generator import has_demo_data

# Aggregates a minute old are fine for trends; a lookup should show what just happened.
METRICS_TTL_S = 60
LOOKUP_TTL_S = 10
CACHE_ENTRIES = 256


def _url() -> str:
    return get_settings().database_url


@contextmanager
def _read(url: str) -> Iterator[Session]:
    with session_scope(get_engine(url), write=False) as session:
        yield session


def clear() -> None:
    """Forget every cached result (tests; after an operator action that changes data)."""
    st.cache_data.clear()


# --- Overview ----------------------------------------------------------------------------------


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _overview(url: str, start: datetime, end: datetime) -> payments.Overview:
    with _read(url) as session:
        return payments.overview(session, Period(start, end))


@shown
def overview(actor: Actor, period: Period) -> tuple[payments.Overview, payments.Overview]:
    """The period's figures and those of the period before it."""
    require(actor, "metrics.view")
    before = period.previous()
    return _overview(_url(), period.start, period.end), _overview(_url(), before.start, before.end)


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _is_demo(url: str) -> bool:
    with _read(url) as session:
        return has_demo_data(session)


@shown
def is_demo(actor: Actor) -> bool:
    """Whether the database holds the generated demo (the Overview then says what it is)."""
    require(actor, "metrics.view")
    return _is_demo(_url())


# --- Payments ----------------------------------------------------------------------------------


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _payment_rates(url: str, start: datetime, end: datetime, grain: Grain) -> pd.DataFrame:
    period = Period(start, end)
    with _read(url) as session:
        raw = payments.payment_rates(session, period, grain, dedupe_cards=False)
        cards = payments.payment_rates(session, period, grain, dedupe_cards=True)
    cards = cards.rename(
        columns={
            "attempts": "cards",
            "succeeded": "cards_succeeded",
            "failed": "cards_failed",
            "success_rate": "success_rate_per_card",
            "decline_rate": "decline_rate_per_card",
        }
    )
    return raw.merge(cards, on="bucket", how="outer").sort_values("bucket", ignore_index=True)


@shown
def payment_rates(actor: Actor, period: Period, grain: Grain) -> pd.DataFrame:
    """Per bucket: attempts and rates counted raw, and per card (deduplicated by fingerprint)."""
    require(actor, "metrics.view")
    return _payment_rates(_url(), period.start, period.end, grain)


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _decline_reasons(url: str, start: datetime, end: datetime) -> pd.DataFrame:
    with _read(url) as session:
        return payments.decline_reasons(session, Period(start, end))


@shown
def decline_reasons(actor: Actor, period: Period) -> pd.DataFrame:
    require(actor, "metrics.view")
    return _decline_reasons(_url(), period.start, period.end)


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _volume_by_currency(url: str, start: datetime, end: datetime, grain: Grain) -> pd.DataFrame:
    with _read(url) as session:
        return payments.volume_by_currency(session, Period(start, end), grain)


@shown
def volume_by_currency(actor: Actor, period: Period, grain: Grain) -> pd.DataFrame:
    """Succeeded volume per bucket and currency, in integer minor units."""
    require(actor, "metrics.view")
    return _volume_by_currency(_url(), period.start, period.end, grain)


# --- Orders ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderPage:
    """One page of search results and how many orders match in all."""

    orders: pd.DataFrame
    total: int
    refused: str | None = None  # why this search is not open to the role, when it is not


DOMAIN_REFUSED = "Searching by email domain needs a role that sees customers' emails."


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _search_orders(url: str, query: str, limit: int, offset: int, full: bool) -> OrderPage:
    with _read(url) as session:
        return OrderPage(
            orders.search_orders(session, query, limit=limit, offset=offset, full_emails=full),
            orders.count_orders(session, query, full_emails=full),
        )


@shown
def search_orders(actor: Actor, query: str, *, limit: int, offset: int) -> OrderPage:
    """Orders matching `query` (email, order id, cs_, pi_, cus_, ch_, card last4), newest first."""
    require(actor, "orders.view")
    if orders.is_domain_query(query) and not _sees_full_emails(actor):
        return OrderPage(orders.search_orders_empty(), 0, DOMAIN_REFUSED)
    # Roles that see emails masked match a whole address only (core.console.orders).
    page = _search_orders(_url(), query.strip(), limit, offset, _sees_full_emails(actor))
    if _sees_full_emails(actor):
        return page
    masked = page.orders.copy()
    masked["customer_email"] = masked["customer_email"].map(mask_email)
    return OrderPage(masked, page.total)


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _exact_match(url: str, query: str) -> Exact | None:
    with _read(url) as session:
        return orders.exact_match(session, query)


@shown
def exact_match(actor: Actor, query: str) -> Exact | None:
    """The one order or customer `query` names exactly (an id), to open it directly."""
    require(actor, "orders.view")
    return _exact_match(_url(), query.strip())


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _customer(url: str, customer_id: str) -> CustomerSummary | None:
    with _read(url) as session:
        return orders.customer_summary(session, customer_id)


@shown
def customer(actor: Actor, customer_id: str) -> CustomerSummary | None:
    require(actor, "orders.view")
    found = _customer(_url(), customer_id)
    if found is None or _sees_full_emails(actor):
        return found
    return replace(found, email=mask_email(found.email))


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _order(url: str, order_id: int) -> OrderDetail | None:
    with _read(url) as session:
        return orders.get_order(session, order_id)


@shown
def order(actor: Actor, order_id: int) -> OrderDetail | None:
    require(actor, "orders.view")
    found = _order(_url(), order_id)
    if found is None or _sees_full_emails(actor):
        return found
    return replace(found, customer_email=mask_email(found.customer_email))


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _timeline(url: str, order_id: int) -> list[TimelineEntry]:
    with _read(url) as session:
        return order_timeline(session, order_id)


@shown
def timeline(actor: Actor, order_id: int) -> list[TimelineEntry]:
    """The order's one timeline, oldest first; emails inside it masked unless allowed, and the
    raw Stripe payloads kept for admins (those who replay events) only."""
    require(actor, "orders.view")
    payloads = allowed(actor.role, "events.replay")
    masked = not _sees_full_emails(actor)
    risk_details = allowed(actor.role, "risk.review")
    return [
        _entry_for(entry, payloads=payloads, masked=masked, risk_details=risk_details)
        for entry in _timeline(_url(), order_id)
    ]


_RISK_ONLY = frozenset({"IP address", "Card fingerprint"})


def _entry_for(
    entry: TimelineEntry, *, payloads: bool, masked: bool, risk_details: bool
) -> TimelineEntry:
    if not risk_details:
        # Buyer IP addresses and card fingerprints are for risk review (README "Personal data").
        entry = replace(
            entry,
            facts={k: v for k, v in entry.facts.items() if k not in _RISK_ONLY},
            technical={k: v for k, v in entry.technical.items() if k not in _RISK_ONLY},
        )
    events = tuple(
        replace(event, payload=event.payload if payloads else None) for event in entry.events
    )
    if not masked:
        return replace(entry, events=events)
    events = tuple(
        replace(
            event,
            last_error=_mask_value(event.last_error),
            payload=_mask_value(event.payload),
            deliveries=tuple(
                replace(delivery, error=_mask_value(delivery.error))
                for delivery in event.deliveries
            ),
        )
        for event in events
    )
    return replace(
        entry,
        title=_mask_text(entry.title),
        facts=_mask_value(entry.facts),
        technical=_mask_value(entry.technical),
        events=events,
    )


def _sees_full_emails(actor: Actor) -> bool:
    return allowed(actor.role, "emails.view_full")


_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"']+@[^\s@<>()\[\],;:\"']+")


def _mask_text(text: str) -> str:
    return _EMAIL.sub(lambda match: mask_email(match.group(0)) or "", text)


def _mask_value(value: Any) -> Any:
    """Mask every email inside a timeline detail (free text from Stripe and operators)."""
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {key: _mask_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(item) for item in value]
    return value


# --- Alerts ------------------------------------------------------------------------------------


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _recent_alerts(url: str, limit: int) -> pd.DataFrame:
    with _read(url) as session:
        rows = alerts.recent_alerts(session, limit=limit)
        return pd.DataFrame(
            [
                {
                    "raised_at": row.raised_at,
                    "condition": row.condition,
                    "message": row.message,
                    "sent": "yes" if row.delivered_at else "no",
                }
                for row in rows
            ],
            columns=["raised_at", "condition", "message", "sent"],
        )


@shown
def recent_alerts(actor: Actor, *, limit: int = 10) -> pd.DataFrame:
    """The latest alerts (new flags, decline and webhook spikes), newest first."""
    require(actor, "metrics.view")
    frame = _recent_alerts(_url(), limit)
    if not _sees_full_emails(actor):
        frame = frame.assign(message=frame["message"].map(_mask_text))
    return frame


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _last_alert_run(url: str) -> alerts.LastRun | None:
    with _read(url) as session:
        return alerts.last_run(session)


@dataclass(frozen=True)
class AlertingStatus:
    """Whether the alert job runs: its last run (None: never) and whether it is overdue."""

    last: alerts.LastRun | None
    overdue: bool
    interval: timedelta
    now: datetime


@shown
def alerting_status(actor: Actor) -> AlertingStatus:
    """When `python -m core alerts` last ran, judged against ALERT_INTERVAL_MINUTES."""
    require(actor, "metrics.view")
    last = _last_alert_run(_url())
    interval = timedelta(minutes=get_settings().alert_interval_minutes)
    now = datetime.now(UTC)
    return AlertingStatus(last, alerts.is_overdue(last, now, interval), interval, now)


# --- Webhooks ----------------------------------------------------------------------------------


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _deliveries_by_day(url: str, start: datetime, end: datetime) -> pd.DataFrame:
    with _read(url) as session:
        return webhooks.deliveries_by_day(session, Period(start, end))


@shown
def deliveries_by_day(actor: Actor, period: Period) -> pd.DataFrame:
    require(actor, "metrics.view")
    return _deliveries_by_day(_url(), period.start, period.end)


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _retry_stats(url: str, start: datetime, end: datetime) -> RetryStats:
    with _read(url) as session:
        return webhooks.retry_stats(session, Period(start, end))


@shown
def retry_stats(actor: Actor, period: Period) -> RetryStats:
    require(actor, "metrics.view")
    return _retry_stats(_url(), period.start, period.end)


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _signature_failures(url: str, start: datetime, end: datetime) -> pd.DataFrame:
    with _read(url) as session:
        return webhooks.signature_failures(session, Period(start, end))


@shown
def signature_failures(actor: Actor, period: Period) -> pd.DataFrame:
    require(actor, "metrics.view")
    return _signature_failures(_url(), period.start, period.end)


@dataclass(frozen=True)
class TablePage:
    rows: pd.DataFrame
    total: int


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _processing_failures(
    url: str, start: datetime, end: datetime, limit: int, offset: int
) -> TablePage:
    period = Period(start, end)
    with _read(url) as session:
        return TablePage(
            webhooks.processing_failures(session, period, limit=limit, offset=offset),
            webhooks.count_processing_failures(session, period),
        )


@shown
def processing_failures(actor: Actor, period: Period, *, limit: int, offset: int) -> TablePage:
    """Deliveries whose handler failed, newest first, one page at a time."""
    require(actor, "metrics.view")
    page = _processing_failures(_url(), period.start, period.end, limit, offset)
    return _mask_column(actor, page, "error")


@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _webhook_lag(url: str, start: datetime, end: datetime) -> pd.DataFrame:
    with _read(url) as session:
        return webhooks.webhook_lag(session, Period(start, end))


@shown
def webhook_lag(actor: Actor, period: Period) -> pd.DataFrame:
    require(actor, "metrics.view")
    return _webhook_lag(_url(), period.start, period.end)


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _oldest_failing_events(url: str, limit: int) -> TablePage:
    with _read(url) as session:
        return TablePage(
            webhooks.oldest_failing_events(session, limit=limit),
            webhooks.count_failing_events(session),
        )


@shown
def oldest_failing_events(actor: Actor, *, limit: int = 20) -> TablePage:
    """Events whose processing still fails, oldest first, and how many fail in all."""
    require(actor, "metrics.view")
    return _mask_column(actor, _oldest_failing_events(_url(), limit), "last_error")


def _mask_column(actor: Actor, page: TablePage, column: str) -> TablePage:
    """Error texts may quote an email from a payload: masked unless the role sees emails."""
    if _sees_full_emails(actor) or page.rows.empty:
        return page
    rows = page.rows.copy()
    rows[column] = rows[column].map(
        lambda text: _mask_text(text) if isinstance(text, str) else text
    )
    return TablePage(rows, page.total)


# --- Audit log (admin) -------------------------------------------------------------------------
# Appended by the auth/audit work (issue 3, pages/audit_log.py).


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _audit_log(url: str, filters: AuditFilter, limit: int, offset: int) -> TablePage:
    with _read(url) as session:
        page = audit.search(session, filters, limit=limit, offset=offset)
        records = [
            {
                "id": entry.id,
                "at": entry.at,
                "actor": entry.actor,
                "role": entry.role,
                "action": entry.action,
                "target": entry.target,
                "details": json.dumps(entry.details, sort_keys=True, default=str),
                "stripe_request_id": entry.stripe_request_id,
                "idempotency_key": entry.idempotency_key,
                "hash": entry.hash[:12],
            }
            for entry in page.rows
        ]
    return TablePage(pd.DataFrame(records, columns=list(AUDIT_COLUMNS)), page.total)


AUDIT_COLUMNS = (
    "id", "at", "actor", "role", "action", "target", "details",
    "stripe_request_id", "idempotency_key", "hash",
)  # fmt: skip


@shown
def audit_log(actor: Actor, filters: AuditFilter, *, limit: int, offset: int) -> TablePage:
    """One page of audit entries matching `filters`, newest first, and how many match."""
    require(actor, "audit.view")
    return _audit_log(_url(), filters, limit, offset)


@st.cache_data(ttl=LOOKUP_TTL_S, max_entries=CACHE_ENTRIES, show_spinner=False)
def _audit_choices(url: str) -> tuple[list[str], list[str]]:
    with _read(url) as session:
        return audit.distinct_values(session, "actor"), audit.distinct_values(session, "action")


@shown
def audit_choices(actor: Actor) -> tuple[list[str], list[str]]:
    """The actors and the actions present in the log, for the filters."""
    require(actor, "audit.view")
    return _audit_choices(_url())


# Walking the whole chain takes seconds at 100,000 entries: once a minute is enough.
@st.cache_data(ttl=METRICS_TTL_S, max_entries=CACHE_ENTRIES, show_spinner="Verifying the chain…")
def _audit_chain(url: str) -> audit.ChainStatus:
    with _read(url) as session:
        return audit.verify(session)


@shown
def audit_chain(actor: Actor) -> audit.ChainStatus:
    """Whether every entry of the hash chain verifies, and where it breaks if not."""
    require(actor, "audit.view")
    return _audit_chain(_url())
