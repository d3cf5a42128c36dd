"""The one error wrapper of the dashboard: problems outside our control become a message."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core.console.stripe_api import StripeProblem
from dashboard.safe import body

P = ParamSpec("P")
R = TypeVar("R")
UNAVAILABLE = "The database is not reachable right now. Try again in a minute."


def shown(func: Callable[P, R]) -> Callable[P, R]:
    """A database outage or a Stripe problem becomes a short message on the page, not a stack
    trace, and the page stops there."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except StripeProblem as problem:
            st.error(body(problem.message), icon=":material/cloud_off:")
            st.stop()
            raise  # st.stop() raises; this keeps the type checker informed
        except SQLAlchemyError:
            st.error(UNAVAILABLE, icon=":material/cloud_off:")
            st.stop()
            raise

    return wrapper
