"""UTCDateTime's fused SQLite bind processor stores exactly what the generic path would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from core.models import UTCDateTime

DIALECT = sqlite.dialect()
FUSED = UTCDateTime().bind_processor(DIALECT)
STORED = DateTime(timezone=True).dialect_impl(DIALECT).bind_processor(DIALECT)
AWARE = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
)


def _generic(value: datetime) -> str:
    assert STORED is not None
    return str(STORED(UTCDateTime().process_bind_param(value, DIALECT)))


@given(AWARE)
def test_fused_sqlite_bind_equals_the_generic_path(value: datetime) -> None:
    assert FUSED is not None
    assert FUSED(value) == _generic(value)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (datetime(2026, 11, 23, 12, 0, tzinfo=UTC), "2026-11-23 12:00:00.000000"),
        (
            datetime(2026, 1, 1, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2))),
            "2025-12-31 23:02:03.000004",
        ),
    ],
)
def test_fused_sqlite_bind_stores_utc_text(value: datetime, stored: str) -> None:
    assert FUSED is not None
    assert FUSED(value) == stored
    assert FUSED(None) is None


def test_fused_sqlite_bind_refuses_naive_times() -> None:
    assert FUSED is not None
    with pytest.raises(ValueError, match="naive"):
        FUSED(datetime(2026, 1, 1))
