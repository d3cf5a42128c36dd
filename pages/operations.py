"""Reconcile & replay (placeholder until the page lands)."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import require

require("events.replay")
st.title("Reconcile & replay")
st.info("Coming soon.")
