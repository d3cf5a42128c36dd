"""What /metrics reports: the receiver's own counters, and the database's signals read at scrape
time (core.prom)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine

from core.prom import SignalsCollector
from core.webhook.receive import Outcome


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "webhook_deliveries",
            "Webhook deliveries by outcome and rejection reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "webhook_processing_seconds",
            "Time to verify, record and apply one delivery",
            ["outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.registry.register(SignalsCollector(lambda: engine))
        # The labelled children by (result, reason): a handful, looked up once each.
        self.children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, outcome: Outcome, seconds: float) -> None:
        key = (outcome.result, outcome.reason or "")
        children = self.children.get(key)
        if children is None:
            children = (self.deliveries.labels(*key), self.latency.labels(outcome.result))
            self.children[key] = children
        children[0].inc()
        children[1].observe(seconds)
