"""Write actions that cannot go wrong: forms that reset after success, and confirmations.

A form's widgets are keyed by the form's *generation*: after a success `reset` moves to the
next generation, so the next run draws a fresh, empty form, and a click still in flight for
the old one (a double click) names a widget that no longer exists and is ignored. Until the
success, the form keeps its action token (`dashboard.live.form_token`), so a rerun or a
repeated click of the same form is the same keyed action and does nothing twice.

A destructive action first `ask`s: the record it will act on (id and label) is kept, the
page shows it with a confirm and a cancel button, and the confirm acts on exactly that record,
whatever the pickers above show meanwhile."""

from __future__ import annotations

from typing import Any

import streamlit as st


def generation(form: str) -> int:
    return int(st.session_state.get(f"_form_gen_{form}", 0))


def key(form: str, field: str) -> str:
    """The widget key of `field` in the current generation of `form`."""
    return f"{form}_{field}_{generation(form)}"


def value(form: str, field: str, default: Any = None) -> Any:
    return st.session_state.get(key(form, field), default)


def reset(form: str) -> None:
    """Start the next generation of `form`: empty widgets, no pending confirmation."""
    st.session_state[f"_form_gen_{form}"] = generation(form) + 1
    st.session_state.pop(f"_confirm_{form}", None)


def ask(form: str, record: dict[str, Any]) -> None:
    """Ask for confirmation before acting on `record` (kept as it is now)."""
    st.session_state[f"_confirm_{form}"] = dict(record)


def pending(form: str) -> dict[str, Any] | None:
    """The record waiting for confirmation, if any."""
    record = st.session_state.get(f"_confirm_{form}")
    return dict(record) if isinstance(record, dict) else None


def cancel(form: str) -> None:
    st.session_state.pop(f"_confirm_{form}", None)
