"""Manual fulfillment (placeholder until the page lands)."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import require

require("fulfillment.request")
st.title("Manual fulfillment")
st.info("Coming soon.")
