"""Risk (placeholder until the page lands)."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import require

require("risk.review")
st.title("Risk")
st.info("Coming soon.")
