"""What the Risk page shows and does: open flags, the attempts behind one, its entity's timeline,
and the review action. Live reads (never cached: a reviewer must see a flag's current state);
emails masked for roles without `emails.view_full`. Pages call these; they hold no SQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ParamSpec, TypeVar

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import risk
from core.access import Actor, PermissionDenied, allowed, mask_email, require
from core.db import get_engine, session_scope
from core.models import PaymentAttempt, RiskFlag
from core.money import to_major
from dashboard import data

P = ParamSpec("P")
R = TypeVar("R")
UNAVAILABLE = "The database is not reachable right now. Try again in a minute."
PATTERN_LABELS = {"burst": "Burst of failures", "card_testing": "Card testing"}
KIND_LABELS = {
    "card": "Card",
    "customer": "Customer",
    "email": "Email",
    "ip": "IP address",
    "promotion_code": "Promotion code",
}


def shown(func: Callable[P, R]) -> Callable[P, R]:
    """A database outage becomes a short message on the page, not a stack trace."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SQLAlchemyError:
            st.error(UNAVAILABLE, icon=":material/cloud_off:")
            st.stop()
            raise

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


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
        risk.display_value(flag.entity_kind, flag.entity_value, actor),
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
        return [_view(f, actor) for f in risk.list_flags(session, status)]


@shown
def detail(actor: Actor, flag_id: int) -> FlagDetail | None:
    require(actor, "risk.review")
    with session_scope(get_engine(), write=False) as session:
        flag = session.get(RiskFlag, flag_id)
        if flag is None:
            return None
        behind = risk.flag_attempts(session, flag)
        around = risk.entity_timeline(session, flag)
        orders = sorted({a.order_id for a in behind if a.order_id is not None})
        return FlagDetail(
            _view(flag, actor),
            _attempts_frame(behind, actor),
            _attempts_frame(around, actor),
            orders,
        )


@shown
def review(actor: Actor, flag_id: int, decision: risk.Decision, note: str) -> tuple[bool, str]:
    """Apply the review; (ok, message to show)."""
    try:
        with session_scope(get_engine()) as session:
            flag = risk.review(session, actor, flag_id, decision, note)
            status = flag.status
    except (PermissionDenied, risk.ReviewError) as exc:
        return False, str(exc)
    data.clear()  # the Overview's open-flag count changes
    return True, f"Flag #{flag_id} {status}. The review is in the audit log."
