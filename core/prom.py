"""Prometheus metrics read from the database at scrape time: the same signals the alerts use,
for teams that alert from Grafana. prometheus_client is a metrics library, not a web framework,
so it may live in core; the receiver registers `SignalsCollector` on its registry.

A scrape runs three small aggregate queries (indexed on time) in one read-only transaction; if
the database is unreachable the scrape still answers, with `payments_signals_up 0`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from core.console import alerts
from core.db import session_scope
from core.models import StripeEvent
from core.risk.detector import ENTITY_COLUMNS

log = logging.getLogger(__name__)


class SignalsCollector(Collector):
    def __init__(self, engine: Callable[[], Engine], clock: Callable[[], datetime] | None = None):
        self._engine = engine  # a callable: the receiver builds its engine at start-up
        self._clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # metrics are only known at collection time (no scrape at register)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("payments_signals_up", "1 when the signals could be read")
        try:
            with session_scope(self._engine(), write=False) as session:
                s = alerts.signals(session, self._clock() if self._clock else None)
                not_applied = _not_applied(session)
        except Exception as exc:  # a scrape must not fail because the database does
            log.error("metrics: could not read signals: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stuck = GaugeMetricFamily(
            "payments_webhook_events_not_applied",
            "Stored Stripe events not applied: failed (retried) or unprocessable (needs a person)",
            labels=["status"],
        )
        for status in NOT_APPLIED:
            stuck.add_metric([status], not_applied.get(status, 0))
        yield stuck
        flags = GaugeMetricFamily(
            "payments_risk_flags_open", "Open risk flags by entity kind", labels=["entity_kind"]
        )
        for kind in ENTITY_COLUMNS:
            flags.add_metric([kind], s.open_flags.get(kind, 0))
        yield flags
        window = f"{int(alerts.ALERT_WINDOW.total_seconds())}s"
        pairs = [
            (
                "payments_decline_rate",
                "Share of payment attempts declined",
                s.declines,
                s.declines_baseline,
            ),
            (
                "payments_webhook_failure_rate",
                "Share of webhook deliveries failed or rejected",
                s.webhook_failures,
                s.webhook_failures_baseline,
            ),
            (
                "payments_webhook_retry_rate",
                "Share of webhook deliveries that were redeliveries",
                s.webhook_retries,
                s.webhook_retries_baseline,
            ),
        ]
        for name, help_text, current, baseline in pairs:
            rate = GaugeMetricFamily(
                name, f"{help_text} (window: recent or baseline)", labels=["window"]
            )
            rate.add_metric([window], current.value)
            rate.add_metric(["baseline_24h"], baseline.value)
            yield rate
            count = GaugeMetricFamily(
                f"{name.removesuffix('_rate')}_events",
                f"Events behind {name}",
                labels=["window", "kind"],
            )
            count.add_metric([window, "total"], current.total)
            count.add_metric([window, "matching"], current.hits)
            count.add_metric(["baseline_24h", "total"], baseline.total)
            count.add_metric(["baseline_24h", "matching"], baseline.hits)
            yield count


NOT_APPLIED = ("failed", "unprocessable")


def _not_applied(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(StripeEvent.status, func.count())
        .where(StripeEvent.status.in_(NOT_APPLIED))
        .group_by(StripeEvent.status)
    ).all()
    return {str(status): int(n) for status, n in rows}
