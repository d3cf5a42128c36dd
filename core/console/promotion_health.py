"""Promotion-code health from our own tables: redemptions per day and per code, and the watch
list of codes near their limit or expiry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.console.promotions import PromotionCodeView
from core.models import Order, PaymentAttempt


@dataclass(frozen=True)
class CodeUsage:
    """What our tables say about one code (keyed by what checkout recorded: id or text)."""

    code: str
    paid_orders: int = 0
    disputed_orders: int = 0
    refunded_orders: int = 0
    failed_attempts: int = 0
    last_used: datetime | None = None


def daily_redemptions(session: Session, since: datetime) -> list[tuple[datetime, str, int]]:
    """Paid orders per day and code since `since`: (day, code, orders)."""
    day = func.date(Order.paid_at)
    rows = session.execute(
        select(day, Order.promotion_code, func.count())
        .where(Order.promotion_code.is_not(None), Order.paid_at >= since)
        .group_by(day, Order.promotion_code)
        .order_by(day)
    ).all()
    out = []
    for raw_day, code, count in rows:
        when = raw_day if isinstance(raw_day, datetime) else datetime.fromisoformat(str(raw_day))
        out.append((when.replace(tzinfo=UTC), str(code), int(count)))
    return out


def code_usage(session: Session, since: datetime) -> dict[str, CodeUsage]:
    """Per code since `since`: paid, disputed and refunded orders, and failed attempts."""
    usage: dict[str, dict[str, Any]] = {}
    orders = session.execute(
        select(
            Order.promotion_code,
            func.count(Order.paid_at),
            func.max(Order.paid_at),
        )
        .where(Order.promotion_code.is_not(None), Order.created_at >= since)
        .group_by(Order.promotion_code)
    ).all()
    disputed = dict(
        session.execute(
            select(Order.promotion_code, func.count())
            .where(
                Order.promotion_code.is_not(None),
                Order.created_at >= since,
                Order.disputed_at.is_not(None),
            )
            .group_by(Order.promotion_code)
        ).all()
    )
    refunded = dict(
        session.execute(
            select(Order.promotion_code, func.count())
            .where(
                Order.promotion_code.is_not(None),
                Order.created_at >= since,
                Order.amount_refunded > 0,
            )
            .group_by(Order.promotion_code)
        ).all()
    )
    for code, paid, last in orders:
        usage[str(code)] = {
            "paid_orders": int(paid or 0),
            "disputed_orders": int(disputed.get(code, 0)),
            "refunded_orders": int(refunded.get(code, 0)),
            "last_used": last,
        }
    failed = session.execute(
        select(PaymentAttempt.promotion_code, func.count())
        .where(
            PaymentAttempt.promotion_code.is_not(None),
            PaymentAttempt.outcome == "failed",
            PaymentAttempt.created >= since,
        )
        .group_by(PaymentAttempt.promotion_code)
    ).all()
    for code, count in failed:
        usage.setdefault(str(code), {})["failed_attempts"] = int(count)
    return {code: CodeUsage(code, **values) for code, values in usage.items()}


@dataclass(frozen=True)
class CodeWarning:
    code: str
    problem: str


def watch_list(
    codes: Iterable[PromotionCodeView],
    now: datetime,
    *,
    share: float = 0.8,
    within: timedelta = timedelta(days=7),
) -> list[CodeWarning]:
    """Active codes near their redemption limit or their expiry."""
    out = []
    for view in codes:
        if not view.active:
            continue
        used = view.usage_share()
        if used is not None and used >= share:
            out.append(
                CodeWarning(
                    view.code,
                    f"{view.times_redeemed} of {view.max_redemptions} redemptions used",
                )
            )
        if view.expires_at is not None and now <= view.expires_at <= now + within:
            hours = int((view.expires_at - now).total_seconds() // 3600)
            out.append(CodeWarning(view.code, f"expires in {hours} h"))
    return out
