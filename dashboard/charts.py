"""The Payments figures: every axis titled with its unit, partial buckets marked, one small
chart per currency (amounts of different currencies never share an axis).

Labels and hover texts may come from Stripe (decline codes): escaped (`<`, `>`, `&`), since
Plotly renders a subset of HTML in them."""

from __future__ import annotations

import html
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.console.declines import decline_label
from core.console.period import GRAIN_LENGTH, Grain, Period, is_partial
from core.money import format_minor, to_major
from dashboard.widgets import grid

TIME_AXIS = "Bucket start (UTC)"
PARTIAL = "partial"
PARTIAL_NOTE = "Shaded: a partial bucket (the period covers only part of it)."


def text(value: object) -> str:
    return html.escape(str(value), quote=False)


def _layout(figure: go.Figure, title: str, *, x_title: str, y_title: str, height: int) -> None:
    figure.update_layout(
        title=text(title),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        height=height,
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.25},
    )
    figure.update_xaxes(title_text=x_title)
    figure.update_yaxes(title_text=y_title)


def _mark_partial(figure: go.Figure, buckets: pd.Series, grain: Grain, period: Period) -> None:
    """Shade each partial bucket and label it, so a low first or last value reads as less time,
    not as a drop."""
    for start in sorted({value.to_pydatetime() for value in buckets}):
        if not is_partial(start, grain, period):
            continue
        end = start + GRAIN_LENGTH[grain]
        figure.add_vrect(
            x0=max(start, period.start), x1=min(end, period.end),
            fillcolor="#9e9e9e", opacity=0.15, line_width=0, layer="below",
        )  # fmt: skip
        figure.add_annotation(
            x=max(start, period.start), xref="x", y=1, yref="paper", text=PARTIAL,
            showarrow=False, xanchor="left", yanchor="bottom", font={"size": 10},
        )  # fmt: skip


def rates(
    frame: pd.DataFrame,
    series: Mapping[str, str],
    *,
    period: Period,
    grain: Grain,
    title: str,
    key: str,
) -> None:
    """Rates per bucket, one line per column of `series` (column -> legend label)."""
    figure = go.Figure()
    partial = [is_partial(value.to_pydatetime(), grain, period) for value in frame["bucket"]]
    symbols = ["circle-open" if flag else "circle" for flag in partial]
    for column, label in series.items():
        figure.add_trace(
            go.Scatter(
                x=frame["bucket"], y=frame[column], mode="lines+markers", name=text(label),
                marker={"symbol": symbols}, hovertemplate="%{y:.1%}",
            )
        )  # fmt: skip
    _layout(figure, title, x_title=TIME_AXIS, y_title="Rate (% of attempts)", height=340)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    _mark_partial(figure, frame["bucket"], grain, period)
    st.plotly_chart(figure, key=key)


def volume_per_currency(
    frame: pd.DataFrame, *, period: Period, grain: Grain, key: str, per_row: int = 2
) -> None:
    """One small bar chart per currency, its axis in that currency's major units."""
    currencies = sorted(str(code) for code in frame["currency"].unique())
    for column, currency in grid(currencies, per_row):
        part = frame[frame["currency"] == currency]
        code = currency.upper()
        figure = go.Figure(
            go.Bar(
                x=part["bucket"],
                y=[to_major(int(value), currency) for value in part["amount"]],
                customdata=[format_minor(int(value), currency) for value in part["amount"]],
                hovertemplate="%{customdata}<extra></extra>",
                name=text(code),
                marker_color="#1565c0",
            )
        )
        _layout(figure, f"{code} volume", x_title=TIME_AXIS, y_title=f"Volume ({code})", height=260)
        figure.update_yaxes(tickformat=",~f", rangemode="tozero")
        _mark_partial(figure, part["bucket"], grain, period)
        with column:
            st.plotly_chart(figure, key=f"{key}_{currency}")


def decline_reasons(frame: pd.DataFrame, *, title: str, key: str) -> None:
    """Declined attempts by reason, in Stripe's words, most frequent on top."""
    ordered = frame.iloc[::-1]
    labels = [text(decline_label(code) or "unknown") for code in ordered["decline_code"]]
    figure = go.Figure(
        go.Bar(x=ordered["failures"], y=labels, orientation="h", hovertemplate="%{x:,}")
    )
    _layout(
        figure, title, x_title="Declined attempts", y_title="Reason (Stripe decline code)",
        height=80 + 26 * len(labels),
    )  # fmt: skip
    figure.update_layout(hovermode="closest")
    figure.update_yaxes(type="category", automargin=True)
    st.plotly_chart(figure, key=key)
