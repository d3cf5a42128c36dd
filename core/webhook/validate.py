"""Can this verified event ever be applied? Checked before its handler runs.

Pure. A signed event may still carry values no handler or database can take: an id with a NUL
or a lone surrogate, an amount beyond 64 bits, a `created` past the year 9999, an object
without its id. Such an event fails the same way on every retry, so it is not a failure of
ours: it is stored as `unprocessable` with the reason from `problem`, answered 2xx (Stripe
stops retrying), and left for an operator to replay once the cause is understood.

Only what the handlers read is checked (core.webhook.handlers): ids and timestamps and amounts
at the paths below. Descriptive text (emails, messages) is never a reason: handlers store it
cleaned (`clean`). Values stored for display (delivery rows, event ids) go through `clean` too.
"""

from __future__ import annotations

import re
from typing import Any

from core.webhook.signature import MAX_CREATED

MAX_ID_CHARS = 255
MAX_INT64 = 2**63 - 1
# Stripe ids are short printable ASCII words (evt_..., cs_test_..., pi_...).
_ID = re.compile(r"[\x21-\x7e]{1,255}")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean(value: str, limit: int) -> str:
    """`value` made storable everywhere: NUL and lone surrogates replaced (by U+FFFD, which no
    Stripe id contains, so a cleaned id never collides with a real one), cut to `limit`."""
    if value.isascii() and "\x00" not in value:  # the usual case, without the regex
        return value[:limit]
    return _UNSTORABLE.sub(REPLACEMENT, value)[:limit]


def clean_or_none(value: Any, limit: int) -> str | None:
    return clean(value, limit) if isinstance(value, str) else None


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


# What each handled type's object must hold, and what its handler reads:
#   object: the value of the object's own `object` field (when present)
#   ids: paths of ids (a string or an expanded object with an `id`), the first one required
#   amounts: non-negative integers that must fit a 64-bit column
#   times: Unix timestamps that must fit a datetime
_Path = tuple[str, ...]
_CHECKOUT: dict[str, Any] = {
    "object": "checkout.session",
    "ids": [("id",), ("payment_intent",), ("customer",), ("discounts", "*", "promotion_code")],
    "amounts": [("amount_total",)],
    "times": [("created",)],
}
_CHARGE: dict[str, Any] = {
    "object": "charge",
    "ids": [("id",), ("payment_intent",), ("customer",)],
    "amounts": [("amount",), ("amount_refunded",)],
    "times": [("created",)],
}
_INTENT: dict[str, Any] = {
    "object": "payment_intent",
    "ids": [
        ("id",),
        ("customer",),
        ("latest_charge",),
        ("latest_charge", "payment_intent"),
        ("latest_charge", "customer"),
        ("charges", "data", "*", "id"),
        ("charges", "data", "*", "payment_intent"),
        ("charges", "data", "*", "customer"),
        ("last_payment_error", "charge"),
    ],
    "amounts": [
        ("amount",),
        ("latest_charge", "amount"),
        ("charges", "data", "*", "amount"),
    ],
    "times": [("created",), ("latest_charge", "created"), ("charges", "data", "*", "created")],
}
_DISPUTE: dict[str, Any] = {
    "object": "dispute",
    "ids": [("id",), ("payment_intent",), ("charge",)],
    "amounts": [("amount",)],
    "times": [("created",)],
}
RULES: dict[str, dict[str, Any]] = {
    "checkout.session.completed": _CHECKOUT,
    "checkout.session.async_payment_succeeded": _CHECKOUT,
    "checkout.session.async_payment_failed": _CHECKOUT,
    "checkout.session.expired": _CHECKOUT,
    "payment_intent.succeeded": _INTENT,
    "payment_intent.payment_failed": _INTENT,
    "charge.succeeded": _CHARGE,
    "charge.failed": _CHARGE,
    "charge.refunded": _CHARGE,
    "charge.dispute.created": _DISPUTE,
}


def envelope_problem(event: dict[str, Any]) -> str | None:
    """What makes the event itself unstorable as sent (its id or type)."""
    if not is_valid_id(event["id"]):
        return "the event id has characters or a length Stripe never sends"
    if _UNSTORABLE.search(event["type"]):
        return "the event type holds a NUL or a lone surrogate"
    return None


def problem(event: dict[str, Any]) -> str | None:
    """Why the handler of `event` could never apply it, or None. The reason names the field,
    never its value (it is shown to operators and answered to Stripe)."""
    found = envelope_problem(event)
    if found or event["type"] not in RULES:
        return found
    rules = RULES[event["type"]]
    obj: dict[str, Any] = event["data"]["object"]
    kind = obj.get("object")
    if kind is not None and kind != rules["object"]:
        return f"data.object is a {_kind(kind)}, not a {rules['object']}"
    for index, path in enumerate(rules["ids"]):
        for value in _values(obj, path):
            if isinstance(value, dict):
                value = value.get("id")
            if value is None and index == 0:
                return "data.object.id: missing"
            if value is not None and not is_valid_id(value):
                what = "not a Stripe id" if isinstance(value, str) else "not a string"
                return f"data.object.{_name(path)}: {what}"
    for path in rules["amounts"]:
        for value in _values(obj, path):
            if _is_int(value) and not 0 <= value <= MAX_INT64:
                return f"data.object.{_name(path)}: integer out of range"
    for path in rules["times"]:
        for value in _values(obj, path):
            if _is_int(value) and value > MAX_CREATED:
                return f"data.object.{_name(path)}: timestamp out of range"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return clean(value, 40) if isinstance(value, str) else type(value).__name__


def _name(path: _Path) -> str:
    return ".".join("[]" if part == "*" else part for part in path).replace(".[]", "[]")


def _values(obj: Any, path: _Path) -> list[Any]:
    """The values at `path` (`*`: every item of a list); a missing step gives None for the
    first step only (a required id), nothing deeper."""
    if len(path) == 1:  # most paths: a field of the object itself
        return [obj.get(path[0])] if isinstance(obj, dict) else []
    current: list[Any] = [obj]
    for depth, part in enumerate(path):
        following: list[Any] = []
        for value in current:
            if part == "*":
                if isinstance(value, list):
                    following.extend(value)
            elif isinstance(value, dict) and (part in value or depth == 0):
                following.append(value.get(part))
        current = following
    return current
