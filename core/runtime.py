"""Wiring shared by the receiver, the command line and the dashboard: what a process builds
once from its settings."""

from __future__ import annotations

from core.risk import hook, rules
from core.settings import Settings
from core.webhook.handlers import Context


def webhook_context(settings: Settings) -> Context:
    """The handler context for this deployment's settings."""
    return Context(
        expected_livemode=settings.expected_livemode,
        on_attempt=(hook.attempt_hook(rules.live_loader(settings)),),
    )
