"""SQLAlchemy 2.0 typed models. Money is an integer in the currency's minor unit. Times are UTC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # process_bind_param and SQLite's DATETIME storage format in one step: every webhook
        # event binds about ten of these (tests/test_models.py checks it against the two).
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given where UTC is required")
            v = value.astimezone(UTC)
            return (
                f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
                f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
            )

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


# --- The webhook path --------------------------------------------------------------------------


class WebhookDelivery(Base):
    """One HTTP request to the webhook endpoint, accepted or not."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # (received_at, outcome) covers deliveries per day; (outcome, received_at) finds the
        # failures of a period without reading the successes (dashboard metrics).
        Index("ix_webhook_deliveries_received_at", "received_at", "outcome"),
        Index("ix_webhook_deliveries_outcome", "outcome", "received_at"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_id: Mapped[str | None] = mapped_column(String(255))
    event_type: Mapped[str | None] = mapped_column(String(255))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    rejection_reason: Mapped[str | None] = mapped_column(String(64))
    http_status: Mapped[int] = mapped_column(Integer)
    # processed|duplicate|ignored|unprocessable|failed, or rejected: a rejected request is
    # counted in webhook_rejections and kept here only as one of a bounded sample.
    outcome: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    body_bytes: Mapped[int] = mapped_column(Integer, default=0)


class StripeEvent(Base):
    """One distinct Stripe event, applied at most once."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        Index("ix_stripe_events_object_id", "object_id"),
        Index("ix_stripe_events_created", "created"),
        Index("ix_stripe_events_status", "status"),
        # Covers retry counts and lag of the events first received in a period.
        Index(
            "ix_stripe_events_first_received_at",
            "first_received_at",
            "deliveries",
            "created",
            "processed_at",
        ),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime]
    livemode: Mapped[bool] = mapped_column(Boolean)
    api_version: Mapped[str | None] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # processed|ignored|failed|unprocessable
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="webhook")  # webhook|reconcile|replay
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload_pruned_at: Mapped[datetime | None]  # retention replaced the body by a stub


# --- Orders ------------------------------------------------------------------------------------


class Order(Base):
    """An order paid through one Checkout Session. `status` is derived from the facts below."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_customer_email", "customer_email"),
        Index("ix_orders_customer_id", "customer_id"),
        Index("ix_orders_created_at", "created_at"),
        Index("ix_orders_status", "status"),
        Index("ix_orders_refunded_at", "refunded_at"),
        Index("ix_orders_disputed_at", "disputed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    customer_id: Mapped[str | None] = mapped_column(String(255))
    customer_email: Mapped[str | None] = mapped_column(String(320))
    amount_total: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="pending")
    promotion_code: Mapped[str | None] = mapped_column(String(255))
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[datetime | None]
    fulfilled_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    refunded_at: Mapped[datetime | None]
    disputed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# Case-insensitive email search (exact or prefix) as a range on lower(email).
Index("ix_orders_customer_email_lower", func.lower(Order.customer_email))


class OrderTransition(Base):
    """A change of an order's status, for the timeline."""

    __tablename__ = "order_transitions"
    __table_args__ = (Index("ix_order_transitions_order_id", "order_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_status: Mapped[str] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str | None] = mapped_column(String(255))
    actor: Mapped[str | None] = mapped_column(String(255))


class Fulfillment(Base):
    """The one fulfillment of a paid order (UNIQUE order_id makes it exactly once)."""

    __tablename__ = "fulfillments"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    fulfilled_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16))  # webhook | manual | reconcile
    actor: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(255))


class FulfillmentRequest(Base):
    """A request for a guarded manual fulfillment; approved by someone else."""

    __tablename__ = "fulfillment_requests"
    __table_args__ = (Index("ix_fulfillment_requests_order_id", "order_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    requested_by: Mapped[str] = mapped_column(String(255))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|done|rejected
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)


class PaymentAttempt(Base):
    """One charge attempt (keyed by the charge id, or the PaymentIntent id when no charge)."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        # Covers the payment metrics of a period (rates, volumes, card dedupe): index-only.
        Index(
            "ix_payment_attempts_created",
            "created",
            "outcome",
            "currency",
            "amount",
            "card_fingerprint",
        ),
        Index("ix_payment_attempts_order_id", "order_id"),
        Index("ix_payment_attempts_payment_intent_id", "payment_intent_id"),
        Index("ix_payment_attempts_card_fingerprint", "card_fingerprint", "created"),
        Index("ix_payment_attempts_card_last4", "card_last4"),
        # (entity, created): burst detection reads one entity's attempts over a time window.
        Index("ix_payment_attempts_email", "email", "created"),
        Index("ix_payment_attempts_customer_id", "customer_id", "created"),
        Index("ix_payment_attempts_ip_address", "ip_address", "created"),
        Index("ix_payment_attempts_promotion_code", "promotion_code", "created"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    customer_id: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    card_fingerprint: Mapped[str | None] = mapped_column(String(64))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_brand: Mapped[str | None] = mapped_column(String(32))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    promotion_code: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str | None] = mapped_column(String(3))
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded | failed
    failure_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    network_status: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime]
    event_id: Mapped[str | None] = mapped_column(String(255))


class PaymentAttemptHourly(Base):
    """payment_attempts summed per UTC hour and currency, so that the dashboard reads whole
    hours here instead of scanning attempts.

    Written only by database triggers on payment_attempts (migration 0002), in the same
    transaction as the attempt itself: every write path keeps it equal to the GROUP BY of
    payment_attempts, and no application code writes it. A (hour, currency) whose attempts
    all went away has no row."""

    __tablename__ = "payment_attempt_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)  # UTC, on the hour
    # '' stands for a NULL currency (a key column cannot be NULL); the webhook path never
    # stores '' in payment_attempts.currency, only a code or NULL.
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    attempts: Mapped[int]
    succeeded: Mapped[int]
    failed: Mapped[int]
    succeeded_amount: Mapped[int] = mapped_column(BigInteger)  # minor units of `currency`


# --- Risk and alerts ---------------------------------------------------------------------------


class RiskFlag(Base):
    """A suspicious burst of failed attempts for one entity."""

    __tablename__ = "risk_flags"
    __table_args__ = (
        Index("ix_risk_flags_entity", "entity_kind", "entity_value", "window_start"),
        Index("ix_risk_flags_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entity_kind: Mapped[str] = mapped_column(String(32))  # card|customer|email|ip|promotion_code
    entity_value: Mapped[str] = mapped_column(String(320))
    pattern: Mapped[str] = mapped_column(String(32), default="burst")  # burst | card_testing
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    failures: Mapped[int] = mapped_column(Integer)
    distinct_cards: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|confirmed|dismissed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    reviewed_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
    # The incident this flag belongs to (flags sharing attempts); see core.risk.incidents.
    incident_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Alert(Base):
    """An alert raised for a condition; at most one per condition per window."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("condition", "window_start"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    condition: Mapped[str] = mapped_column(String(255))
    window_start: Mapped[datetime]
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    message: Mapped[str] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime | None]  # a run posting it holds this lease (core.console.alerts)


# --- Staff, sessions, audit --------------------------------------------------------------------


class LoginAttempt(Base):
    """A login attempt, successful or not; lockout counts failures from here."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_at", "username", "at"),
        # One user's attempts from one client (core.auth.sessions: per-client delays).
        Index("ix_login_attempts_username_client_at", "username", "client", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    # Issue 12 (login abuse): where the attempt came from, and when an admin cleared a failure.
    client: Mapped[str | None] = mapped_column(String(64))
    cleared_at: Mapped[datetime | None]


class UserSession(Base):
    """A dashboard session. Only the token's hash is stored."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_username", "username"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class StripeAction(Base):
    """A mutating call to Stripe, with the idempotency key chosen for it (reused on retry)."""

    __tablename__ = "stripe_actions"
    __table_args__ = (UniqueConstraint("action_key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    action_key: Mapped[str] = mapped_column(String(255))  # what makes two clicks the same action
    kind: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    stripe_request_id: Mapped[str | None] = mapped_column(String(255))
    result_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)


class AuditEntry(Base):
    """Append-only, hash-chained log of operator actions and security events."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor", "actor"),
        Index("ix_audit_log_target", "target"),  # an order's timeline: target "order:<id>"
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stripe_request_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


# --- Webhook path: rejected traffic (issue 11) -------------------------------------------------


class WebhookRejection(Base):
    """Rejected webhook requests counted per UTC minute, reason and source address.

    A flood of unauthenticated requests adds one counter row per (minute, reason, address),
    not a row per request; webhook_deliveries keeps a bounded sample of them with details."""

    __tablename__ = "webhook_rejections"

    minute: Mapped[datetime] = mapped_column(primary_key=True)  # UTC, on the minute
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    remote_addr: Mapped[str] = mapped_column(String(64), primary_key=True)  # '' when unknown
    deliveries: Mapped[int] = mapped_column(Integer)


# --- receiver edge (issue 11 A) -----------------------------------------------------------------


class ReceiverHeartbeat(Base):
    """One row per receiver name, rewritten by every /healthz: the check proves that the
    database takes a write (and commits it), not only that it answers a SELECT."""

    __tablename__ = "receiver_heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Risk: incidents and rules (issue 14) ------------------------------------------------------


class RiskIncident(Base):
    """Flags that share attempts (one attack seen through several entities), reviewed once."""

    __tablename__ = "risk_incidents"
    __table_args__ = (Index("ix_risk_incidents_status", "status", "last_seen"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|confirmed|dismissed
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    flags: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    reviewed_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)


class RiskRuleSet(Base):
    """One saved version of the detection rules; the highest version is live."""

    __tablename__ = "risk_rule_sets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)
    # {"rules": [{"kind", "pattern", "threshold", "window_minutes"}], "allow": [[kind, value]]}
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --- Operator jobs (issue 13: reconciliation runs once at a time) -------------------------------


class Job(Base):
    """The lock and progress of a long operator job (one row per job name, e.g. "reconcile"),
    visible to every session and process. Taken atomically by `core.console.jobs.claim`;
    a running job whose heartbeat is older than the stale timeout may be taken over."""

    __tablename__ = "jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="idle")  # idle|running|done|failed
    token: Mapped[str | None] = mapped_column(String(64))  # the request that started the run
    started_by: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    step: Mapped[str | None] = mapped_column(String(255))
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int | None] = mapped_column()
    result: Mapped[list[str] | None] = mapped_column(JSON)


# --- Alert job schedule (issue 14b) ------------------------------------------------------------


class JobRun(Base):
    """When a periodic job (the alert job) last ran: one row per job, overwritten each run."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    ok: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[str] = mapped_column(Text)
