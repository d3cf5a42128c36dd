"""Promotion codes (placeholder until the page lands)."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import require

require("promotions.view")
st.title("Promotion codes")
st.info("Coming soon.")
