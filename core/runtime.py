"""Wiring shared by the receiver, the command line and the dashboard: what a process builds
once from its settings."""

from __future__ import annotations

from core import risk
from core.handlers import Context
from core.settings import Settings


def webhook_context(settings: Settings) -> Context:
    """The handler context for this deployment's settings."""
    return Context(
        expected_livemode=settings.expected_livemode,
        on_attempt=(risk.attempt_hook(risk.rules_from(settings)),),
    )
