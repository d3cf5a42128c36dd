"""Audit log (placeholder until the page lands)."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import require

require("audit.view")
st.title("Audit log")
st.info("Coming soon.")
