"""Small UI pieces the pages share: period picker, pager, money, charts, CSV download.

Widgets only draw and read input; they never fetch data (that is dashboard/data.py).

Untrusted text (anything from Stripe, a customer or a colleague) goes through the helpers of
dashboard/safe.py, re-exported here: `markdown`, `caption`, `error`... take data as text,
`md(template, *values)` builds markdown around it, tables and charts neutralise their cells
and labels, CSV downloads neutralise formulas. Never `st.markdown(f"...{value}...")`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.console.alerts import LastRun
from core.console.period import GRAINS, Grain, Period
from core.money import format_minor, to_major
from dashboard.safe import Markdown as Markdown
from dashboard.safe import body, chart_text, csv_bytes, inline
from dashboard.safe import chart_texts as chart_texts
from dashboard.safe import md as md
from dashboard.safe import mono as mono
from dashboard.safe import plain as plain
from dashboard.safe import safe_frame as safe_frame

PRESETS: dict[str, int] = {
    "Last 24 hours": 1,
    "Last 7 days": 7,
    "Last 30 days": 30,
    "Last 90 days": 90,
}
CUSTOM = "Custom dates"
# A chart never draws more than this many buckets (aggregated in SQL, not in the browser).
MAX_BUCKETS = 2_000
# ... nor fewer than this: 24 hours by day would be two partial days joined by a line.
MIN_BUCKETS = 3
_HOURS_PER_GRAIN = {"hour": 1, "day": 24, "week": 24 * 7}
T = TypeVar("T")
# Rows per page of a paged table.
PAGE_SIZE = 25


# --- Formatting --------------------------------------------------------------------------------


def money(amount: int | None, currency: str | None) -> str:
    """Integer minor units in the currency's own format (JPY 500, USD 12.34, KWD 1.500)."""
    if currency and not (currency.isascii() and currency.isalpha()):
        return f"{int(amount or 0):,} (unknown currency)"  # not a code: never shown as one
    return format_minor(int(amount or 0), currency)


_COMPACT = ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K"))


def money_compact(amount: int | None, currency: str | None, *, code: bool = True) -> str:
    """A headline amount short enough for a metric tile: 'EUR 147.3K', 'JPY 12.4M'; below ten
    thousand the exact amount. Without `code` (a tile labelled with the currency): '147.3K'.
    Show `money` beside it (a tooltip) for the exact value."""
    minor = int(amount or 0)
    if not currency:
        return money(minor, currency)
    prefix = f"{currency.upper()} " if code else ""
    major = to_major(minor, currency)
    for size, suffix in _COMPACT:
        if abs(major) >= 10 * size or (size > 1_000 and abs(major) >= size):
            return f"{prefix}{major / size:,.1f}{suffix}"
    exact = money(minor, currency)
    return exact if code else exact.split(" ", 1)[1]


def money_delta_compact(
    current: int, previous: int, currency: str, *, code: bool = True
) -> str | None:
    """`money_delta` in compact notation, for metric tiles."""
    diff = current - previous
    if diff == 0 and previous == 0:
        return None
    sign = "+" if diff >= 0 else "-"
    text = f"{sign}{money_compact(abs(diff), currency, code=code)}"
    return f"{text} ({diff / previous:+.1%})" if previous else text


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def count_delta(current: int, previous: int) -> str | None:
    """'+12 (+8.0%)' against the previous period; None when nothing to compare."""
    diff = current - previous
    if previous == 0:
        return None if diff == 0 else f"{diff:+,}"
    return f"{diff:+,} ({diff / previous:+.1%})"


def rate_delta(current: float | None, previous: float | None) -> str | None:
    """A change of a rate, in percentage points."""
    if current is None or previous is None:
        return None
    return f"{(current - previous) * 100:+.1f} pp"


def money_delta(current: int, previous: int, currency: str) -> str | None:
    diff = current - previous
    if diff == 0 and previous == 0:
        return None
    sign = "+" if diff >= 0 else "-"
    text = f"{sign}{money(abs(diff), currency)}"
    return f"{text} ({diff / previous:+.1%})" if previous else text


# --- Inputs ------------------------------------------------------------------------------------


def period_picker(key: str, default: str = "Last 30 days") -> Period:
    """The period a page looks at; the previous period of the same length is its comparison."""
    options = [*PRESETS, CUSTOM]
    choice = st.selectbox("Period", options, index=options.index(default), key=f"{key}_period")
    if choice != CUSTOM:
        # To the next whole minute: the same period (and cache entry) for a minute of reruns.
        now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        return Period.last(PRESETS[choice], now=now)
    today = datetime.now(UTC).date()
    picked = st.date_input(
        "From / to (UTC, inclusive)",
        value=(today - timedelta(days=6), today),
        max_value=today,
        key=f"{key}_dates",
    )
    start, end = _date_range(picked, today)
    return Period(
        datetime.combine(start, time.min, UTC),
        datetime.combine(end + timedelta(days=1), time.min, UTC),
    )


def _date_range(picked: object, today: date) -> tuple[date, date]:
    if isinstance(picked, date):
        return picked, picked
    if isinstance(picked, Sequence) and picked:
        values = [value for value in picked if isinstance(value, date)]
        if values:
            return min(values), max(values)
    return today, today


def grain_picker(period: Period, key: str) -> Grain:
    """hour / day / week, offering only grains that draw between MIN_BUCKETS and MAX_BUCKETS
    points for the period (a 24-hour period is drawn by the hour)."""
    hours = max((period.end - period.start).total_seconds() / 3600, 1)
    usable = [g for g in GRAINS if MIN_BUCKETS <= hours / _HOURS_PER_GRAIN[g] <= MAX_BUCKETS] or [
        GRAINS[0]
    ]
    default: Grain = "day" if "day" in usable and hours > 72 else usable[0]
    chosen = st.segmented_control(
        "Granularity", usable, default=default, key=f"{key}_grain", required=True
    )
    return chosen or default


def page_offset(key: str, page_size: int) -> int:
    """Offset of the page the user chose (read before the query, drawn after it by `pager`)."""
    page = st.session_state.get(f"{key}_page") or 1
    return (int(page) - 1) * page_size


def pager(total: int, page_size: int, key: str) -> None:
    """Page buttons under a table of `total` rows; a rerun shows the chosen page."""
    pages = max(math.ceil(total / page_size), 1)
    if int(st.session_state.get(f"{key}_page") or 1) > pages:
        # The rows changed under the table (fewer matches than before): back to page one.
        st.session_state.pop(f"{key}_page", None)
        st.rerun()
    if pages > 1:
        st.pagination(pages, key=f"{key}_page")


def reset_pager_on_change(key: str, value: object) -> None:
    """Back to page one when the query behind a paged table changes."""
    marker = f"{key}_paged_for"
    if st.session_state.get(marker) != value:
        st.session_state[marker] = value
        st.session_state.pop(f"{key}_page", None)


# --- Output ------------------------------------------------------------------------------------


def line_chart(
    frame: pd.DataFrame,
    x: str,
    series: Mapping[str, str],
    *,
    title: str,
    percent_axis: bool = False,
    key: str,
) -> None:
    """One line per column of `series` (column -> legend label)."""
    figure = go.Figure()
    for column, label in series.items():
        figure.add_trace(
            go.Scatter(x=frame[x], y=frame[column], mode="lines+markers", name=chart_text(label))
        )
    _layout(figure, title)
    if percent_axis:
        figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    st.plotly_chart(figure, key=key)


# Webhook delivery outcomes, good to bad, each in a colour that says which it is.
OUTCOME_COLORS = {
    "processed": "#2e7d32",
    "duplicate": "#90a4ae",
    "ignored": "#cfd8dc",
    "rejected": "#f9a825",
    "failed": "#c62828",
}


def stacked_bars(
    frame: pd.DataFrame,
    x: str,
    stack: str,
    y: str,
    *,
    title: str,
    key: str,
    colors: Mapping[str, str] = OUTCOME_COLORS,
) -> None:
    """Bars of `y` per `x`, stacked by the values of `stack` (e.g. outcome), in the order and
    colours of `colors`, then any other value."""
    figure = go.Figure()
    present = [str(value) for value in frame[stack].unique()]
    ordered = [name for name in colors if name in present]
    ordered += sorted(name for name in present if name not in colors)
    for name in ordered:
        part = frame[frame[stack] == name]
        figure.add_trace(
            go.Bar(x=part[x], y=part[y], name=chart_text(name), marker_color=colors.get(name))
        )
    figure.update_layout(barmode="stack")
    _layout(figure, title)
    st.plotly_chart(figure, key=key)


def bars(frame: pd.DataFrame, x: str, y: str, *, title: str, key: str, log_y: bool = False) -> None:
    figure = go.Figure(go.Bar(x=chart_texts(frame[x]), y=frame[y]))
    _layout(figure, title)
    figure.update_xaxes(type="category")
    if log_y:
        # Powers of ten only: a tick at every 2, 5 and 10 clutters a log axis.
        figure.update_yaxes(type="log", dtick=1, tickformat=",d", minor={"showgrid": False})
    st.plotly_chart(figure, key=key)


def _layout(figure: go.Figure, title: str) -> None:
    figure.update_layout(
        title=chart_text(title),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=320,
        hovermode="x unified",
    )


RATE_COLUMNS = {
    "success_rate": st.column_config.NumberColumn("success rate", format="percent"),
    "decline_rate": st.column_config.NumberColumn("decline rate", format="percent"),
    "success_rate_per_card": st.column_config.NumberColumn(
        "success rate per card", format="percent"
    ),
    "decline_rate_per_card": st.column_config.NumberColumn(
        "decline rate per card", format="percent"
    ),
    "share": st.column_config.NumberColumn("share", format="percent"),
    "bucket": st.column_config.DatetimeColumn("bucket (UTC)", format="YYYY-MM-DD HH:mm"),
    "day": st.column_config.DatetimeColumn("day (UTC)", format="YYYY-MM-DD"),
}


def table(frame: pd.DataFrame, *, key: str) -> None:
    """A read-only table with rates shown as percentages and buckets as UTC times."""
    st.dataframe(safe_frame(frame), hide_index=True, key=key, column_config=RATE_COLUMNS)


def csv_download(frame: pd.DataFrame, file_name: str, *, label: str, key: str) -> None:
    """Exactly the rows and columns on screen, as CSV whose cells cannot run as formulas."""
    st.download_button(
        label,  # markup: console text (the pages' own labels)
        csv_bytes(frame),
        file_name=file_name,
        mime="text/csv",
        key=key,
        on_click="ignore",
        icon=":material/download:",
    )


def refusal(message: str) -> None:
    st.error(body(message), icon=":material/block:")


def period_label(period: Period) -> str:
    fmt = "%Y-%m-%d %H:%M"
    return f"{period.start:{fmt}} – {period.end:{fmt}}"


def grid(items: Sequence[T], per_row: int) -> list[tuple[DeltaGenerator, T]]:
    """Lay items out in rows of `per_row` columns; each item with the column to draw it in."""
    placed: list[tuple[DeltaGenerator, T]] = []
    for row in range(0, len(items), per_row):
        chunk = items[row : row + per_row]
        placed.extend(zip(st.columns(per_row), chunk, strict=False))
    return placed


def escape_markdown(text: str) -> str:
    """Data shown inside st.markdown is text, never markup (ids, emails, decline messages).
    Prefer `md(template, *values)`; kept for the pages that still call it."""
    return inline(text)


# --- Tables ------------------------------------------------------------------------------------


def orders_table(orders: pd.DataFrame) -> pd.DataFrame:
    """Search results as people read them: money per currency, no minor units, which field
    matched the search, and "–" for every empty cell."""
    table = safe_frame(
        {
            "order": orders["id"],
            "matched on": orders.get("matched"),
            "created (UTC)": orders["created_at"].dt.strftime("%Y-%m-%d %H:%M"),
            "email": orders["customer_email"],
            "amount": [
                money(amount, currency)
                for amount, currency in zip(orders["amount_total"], orders["currency"], strict=True)
            ],
            "status": orders["status"],
            "checkout session": orders["checkout_session_id"],
            "payment intent": orders["payment_intent_id"],
            "customer": orders["customer_id"],
        }
    )
    return table.astype(object).where(table.notna(), "–")


def order_labels(orders: pd.DataFrame) -> dict[int, str]:
    """'#12 · jenny@example.com · USD 25.00 · fulfilled' for each order id."""
    labels: dict[int, str] = {}
    for record in orders.to_dict("records"):
        email = record["customer_email"] or "no email"
        amount = money(int(record["amount_total"]), record["currency"])
        labels[int(record["id"])] = plain(
            f"#{record['id']} · {email} · {amount} · {record['status']}", limit=300
        )
    return labels


def describe(detail: Mapping[str, object]) -> str:
    """A timeline entry's facts as one line, leaving out what is empty."""
    parts = []
    currency = detail.get("currency")
    for key, value in detail.items():
        if value is None or value == "" or value == {} or key == "currency":
            continue
        if key == "amount" and isinstance(value, int) and isinstance(currency, str):
            value = money(value, currency)
        if isinstance(value, datetime):
            value = f"{value:%Y-%m-%d %H:%M:%S}"
        elif isinstance(value, float):
            value = f"{value:.1f}"
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return " · ".join(parts)


def money_table(frame: pd.DataFrame, amount: str = "amount") -> pd.DataFrame:
    """A copy of `frame` whose `amount` column is formatted in each row's currency."""
    shown = frame.copy()
    shown[amount] = [
        money(value, currency)
        for value, currency in zip(frame[amount], frame["currency"], strict=True)
    ]
    return shown


def currency_lines(frame: pd.DataFrame, *, title: str, key: str) -> None:
    """One line per currency, in major units (for the eye only; totals stay integers)."""
    figure = go.Figure()
    for currency, part in frame.groupby("currency", sort=True):
        code = str(currency)
        major = [to_major(int(value), code) for value in part["amount"]]
        figure.add_trace(
            go.Scatter(
                x=part["bucket"], y=major, mode="lines+markers", name=chart_text(code.upper())
            )
        )
    _layout(figure, title)
    st.plotly_chart(figure, key=key)


def flash(key: str, message: str) -> None:
    """Keep a success message across the rerun that shows the changed data."""
    st.session_state[f"_flash_{key}"] = message


def show_flash(key: str) -> None:
    """Show (once) the message `flash` kept for this page, in a slot that exists on every run,
    so the elements below keep their places (no stale copies while the page reruns)."""
    slot = st.empty()
    message = st.session_state.pop(f"_flash_{key}", None)
    if message:
        slot.success(body(message))


# --- Tables people read (issue 13: no clipped keys, no internal names, one empty marker) -------

EMPTY = "–"
FAILURE_COLUMNS = {
    "event_id": st.column_config.TextColumn("Stripe event", width="medium"),
    "id": st.column_config.TextColumn("Stripe event", width="medium"),
    "event": st.column_config.TextColumn("Stripe event", width="medium"),
    "event_type": st.column_config.TextColumn("Type", width="medium"),
    "type": st.column_config.TextColumn("Type", width="medium"),
    "received_at": st.column_config.DatetimeColumn("Received (UTC)", format="YYYY-MM-DD HH:mm"),
    "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
    "first_received_at": st.column_config.DatetimeColumn(
        "First received (UTC)", format="YYYY-MM-DD HH:mm"
    ),
    "deliveries": st.column_config.NumberColumn("Deliveries"),
    "error": st.column_config.TextColumn("What went wrong", width="large"),
    "last_error": st.column_config.TextColumn("What went wrong", width="large"),
}
CODE_COLUMNS = {
    "code": st.column_config.TextColumn("Code", width="medium"),
    "active": st.column_config.CheckboxColumn("Active"),
    "terms": st.column_config.TextColumn("Terms", width="medium"),
    "redeemed": st.column_config.NumberColumn("Redeemed"),
    "limit": st.column_config.NumberColumn("Limit"),
    "expires (UTC)": st.column_config.TextColumn("Expires (UTC)"),
    "restrictions": st.column_config.TextColumn("Restrictions", width="large"),
    "id": st.column_config.TextColumn("Stripe id", width="medium"),
}


def plain_error(text: object) -> str:
    """A stored error as people read it: "RuntimeError: warehouse timed out" says "warehouse
    timed out" (the exception's class name is for the logs)."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return EMPTY
    head, sep, rest = str(text).partition(": ")
    return rest if sep and head.isidentifier() and head[:1].isupper() else str(text)


def failures_table(frame: pd.DataFrame, *, key: str) -> None:
    """Failed deliveries or events: human column names, wide enough for the ids and the error,
    errors without exception class names, "–" for empty cells."""
    shown = frame.copy()
    for column in ("error", "last_error"):
        if column in shown:
            shown[column] = shown[column].map(plain_error)
    st.dataframe(safe_frame(shown), hide_index=True, key=key, column_config=FAILURE_COLUMNS)


def codes_table(frame: pd.DataFrame, *, key: str) -> None:
    """Promotion codes with the code and its Stripe id never clipped."""
    st.dataframe(safe_frame(frame), hide_index=True, key=key, column_config=CODE_COLUMNS)


# --- Text from data ----------------------------------------------------------------------------
# Each takes a plain str as text (escaped) and `Markdown` (from `md` / `mono`) as markdown.


def markdown(value: object) -> None:
    st.markdown(body(value))


def caption(value: object) -> None:
    st.caption(body(value))


def info(value: object, *, icon: str | None = None) -> None:
    st.info(body(value), icon=icon)


def success(value: object, *, icon: str | None = None) -> None:
    st.success(body(value), icon=icon)


def warning(value: object, *, icon: str | None = None) -> None:
    st.warning(body(value), icon=icon)


def error(value: object, *, icon: str | None = None) -> None:
    st.error(body(value), icon=icon)


def text(value: object) -> None:
    """Several lines of text from a person (a note, a reason), as they wrote them."""
    st.text(plain(value, multiline=True))


def rows(data: object, *, key: str) -> None:
    """A read-only table of data (a DataFrame or a list of dicts); cells stay text."""
    st.dataframe(safe_frame(data), hide_index=True, key=key)


# --- Overview: what the data is, whether alerting runs (issue 14) -------------------------------

DEMO_NOTE = (
    "This is the demo: about 90 days of a made-up shop's Stripe traffic, generated by "
    "`python -m core demo` and recorded through the real webhook path. Ordinary shoppers pay "
    "on about 88% of attempts (Stripe reports 85 to 95% for card payments); a few attacks are "
    "in it on purpose (card testing, an account attack, a promotion-code abuse, a card retried "
    "again and again), as are a fulfilment outage, a webhook signing-secret rotation and "
    "scanners probing the webhook endpoint."
)


def ago(delta: timedelta) -> str:
    """'45 s', '12 min', '3 h', '2 days'."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def alerting_status(
    last: LastRun | None, overdue: bool, interval: timedelta, now: datetime
) -> None:
    """When the alert job last ran; a warning when it never ran, is overdue or failed."""
    every = f"every {int(interval.total_seconds() // 60)} min"
    if last is None:
        st.warning(
            md(
                "Alerting has never run against this database, so no alert can be raised. "
                "Run `python -m core alerts` {} (cron); `make run` does it for the demo.",
                every,
            ),
            icon=":material/notifications_off:",
        )
        return
    when = f"{ago(now - last.finished_at)} ago ({last.finished_at:%Y-%m-%d %H:%M} UTC)"
    if overdue:
        st.warning(
            md(
                "Alerting is overdue: it last ran {} and should run {}. "
                "Alerts may be missing: check the cron job running `python -m core alerts`.",
                when,
                every,
            ),
            icon=":material/notifications_paused:",
        )
    elif not last.ok:
        st.warning(md("Alerting last ran {} with a problem: {}.", when, last.summary))
    else:
        st.caption(md("Alerting last ran {} (runs {}): {}.", when, every, last.summary))
