"""Roles and permissions (DESIGN.md "Roles"). The UI hides what a role may not use; core
checks again every time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    pass


Role = Literal["support", "finance", "admin"]
ROLES: tuple[Role, ...] = ("support", "finance", "admin")

# permission -> roles that hold it (DESIGN.md "Roles")
PERMISSIONS: dict[str, frozenset[str]] = {
    "orders.view": frozenset({"support", "finance", "admin"}),
    "emails.view_full": frozenset({"support", "admin"}),
    "metrics.view": frozenset({"finance", "admin"}),
    "risk.review": frozenset({"finance", "admin"}),
    "risk.rules": frozenset({"admin"}),  # edit the detection rules (issue 14)
    "fulfillment.request": frozenset({"support", "admin"}),
    "fulfillment.approve": frozenset({"admin"}),
    "promotions.view": frozenset({"support", "finance", "admin"}),
    "promotions.manage": frozenset({"admin"}),
    "events.replay": frozenset({"admin"}),
    "audit.view": frozenset({"admin"}),
    "users.manage": frozenset({"admin"}),
    "personal_data.erase": frozenset({"admin"}),
}


class PermissionDenied(Exception):
    """The actor's role does not allow the action; the message is safe to show."""


@dataclass(frozen=True)
class Actor:
    """Who performs an action: a staff member, or a named system process (role None)."""

    username: str
    role: Role | None = None

    @property
    def is_system(self) -> bool:
        return self.role is None


SYSTEM = Actor("system")


def allowed(role: str | None, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")
    return role is not None and role in PERMISSIONS[permission]


def require(actor: Actor, permission: str) -> None:
    """Raise PermissionDenied unless `actor` holds `permission`."""
    if not allowed(actor.role, permission):
        raise PermissionDenied(
            f"Your role ({actor.role or 'none'}) may not do this ({permission})."
        )


def mask_email(email: str | None) -> str | None:
    """j***@example.com: enough to recognise, not enough to contact."""
    if not email or "@" not in email:
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"
