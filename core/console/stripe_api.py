"""The only module that talks to Stripe.

One `StripeApi` wraps stripe-python's `StripeClient` with the API version the SDK pins,
explicit timeouts and network retries, and `STRIPE_API_BASE` for local stand-ins. Stripe's
errors become four domain errors whose messages are safe to show. Objects come back as plain
dicts (`to_dict()`), never stripe objects, so nothing downstream calls `.get()` on them.

Every mutating call goes through `run_action`: the idempotency key is ours, stored in
`stripe_actions` under the action's key (what makes two clicks the same action) before the
call, so a retry, a double click or a Streamlit rerun sends the same key and a new action a
new one. Network calls never happen inside a database transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import Engine, select

from core.auth import audit
from core.auth.permissions import Actor
from core.db import insert_ignore, session_scope
from core.models import StripeAction
from core.settings import Settings

log = logging.getLogger(__name__)

API_VERSION: str = stripe.api_version
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
NETWORK_RETRIES = 2
STANDIN_KEY = "sk_test_standin_offline_demo"
PAGE_SIZE = 100


# --- Errors -------------------------------------------------------------------------------------


class StripeProblem(Exception):
    """A call to Stripe did not succeed. The message is safe to show: no key, no internals."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class StripeUnavailable(StripeProblem):
    """Stripe could not be reached or failed; the outcome is unknown, a retry is safe."""


class StripeRejected(StripeProblem):
    """Stripe refused the request as invalid; retrying the same request will not help."""


class StripeNotFound(StripeProblem):
    """Stripe has no such object."""


class StripeAuthError(StripeProblem):
    """Stripe refused our key, or it is not configured."""


_SECRETISH = re.compile(r"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_*]+")


def _scrub(text: str | None, limit: int = 300) -> str:
    cleaned = _SECRETISH.sub("[redacted]", text or "").strip()
    return cleaned[:limit] or "no detail given"


def translate(exc: stripe.StripeError) -> StripeProblem:
    """The domain error for one of stripe-python's errors."""
    rid = exc.request_id
    if isinstance(exc, stripe.APIConnectionError):
        return StripeUnavailable(
            "Stripe could not be reached (network error or timeout); try again.", rid
        )
    if isinstance(exc, stripe.RateLimitError):
        return StripeUnavailable("Stripe is limiting the request rate; try again shortly.", rid)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeAuthError(
            "Stripe refused this console's API key; an administrator must check STRIPE_SECRET_KEY.",
            rid,
        )
    if isinstance(exc, stripe.IdempotencyError):
        return StripeRejected(
            "Stripe already saw this action with different details; start a new action.", rid
        )
    status = exc.http_status or 0
    if status == 404:
        return StripeNotFound("Stripe has no such object.", rid)
    if isinstance(exc, stripe.InvalidRequestError | stripe.CardError) or 400 <= status < 500:
        param = getattr(exc, "param", None)
        where = f" (field {param})" if isinstance(param, str) and param else ""
        return StripeRejected(
            f"Stripe rejected the request{where}: {_scrub(exc.user_message)}", rid
        )
    return StripeUnavailable("Stripe failed to answer properly; try again.", rid)


# --- The client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A Stripe object as a plain dict, with the request id Stripe gave the call."""

    data: dict[str, Any]
    request_id: str | None


def _reply(obj: Any) -> Reply:
    response = getattr(obj, "last_response", None)
    request_id = response.request_id if response is not None else None
    return Reply(obj.to_dict(for_json=True), request_id)


class StripeApi:
    """Every call the console makes to Stripe (or to a stand-in at `api_base`)."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_network_retries: int = NETWORK_RETRIES,
    ) -> None:
        addresses: Any = {"api": api_base.rstrip("/")} if api_base else None
        self.api_base = api_base
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=API_VERSION,
            base_addresses=addresses,
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=(connect_timeout, read_timeout)),
        )

    @property
    def is_standin(self) -> bool:
        """True when the calls go to a local stand-in, not to Stripe."""
        return self.api_base is not None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except stripe.StripeError as exc:
            problem = translate(exc)
            log.warning(
                "stripe call failed: %s (request %s)", type(problem).__name__, exc.request_id
            )
            raise problem from None

    def _iterate(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every object of a list, page after page (`starting_after`). Pages are read as plain
        JSON: building stripe objects costs ~2.5 ms per event, which made 30 days of events
        crawl; nothing here needs them."""
        params = {"limit": PAGE_SIZE, **params}
        while True:
            response = self._call(self._client.raw_request, "get", path, **params)
            page = json.loads(response.body)
            items = page.get("data") or []
            yield from items
            if not page.get("has_more") or not items:
                return
            params["starting_after"] = items[-1]["id"]

    # Reads

    def retrieve_checkout_session(self, session_id: str) -> Reply:
        """The session with its PaymentIntent and that intent's latest charge expanded."""
        return _reply(
            self._call(
                self._client.v1.checkout.sessions.retrieve,
                session_id,
                params={"expand": ["payment_intent", "payment_intent.latest_charge"]},
            )
        )

    def retrieve_payment_intent(self, intent_id: str) -> Reply:
        return _reply(
            self._call(
                self._client.v1.payment_intents.retrieve,
                intent_id,
                params={"expand": ["latest_charge"]},
            )
        )

    def retrieve_coupon(self, coupon_id: str) -> Reply:
        return _reply(self._call(self._client.v1.coupons.retrieve, coupon_id))

    def list_promotion_codes(self) -> Iterator[dict[str, Any]]:
        """Every promotion code, with its coupon expanded when Stripe allows it."""
        return self._iterate("/v1/promotion_codes", {"expand": ["data.promotion.coupon"]})

    def list_events(
        self, *, created_gte: int, delivery_success: bool | None = None
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"created": {"gte": created_gte}}
        if delivery_success is not None:
            params["delivery_success"] = delivery_success
        return self._iterate("/v1/events", params)

    def list_checkout_sessions(self, *, created_gte: int) -> Iterator[dict[str, Any]]:
        return self._iterate(
            "/v1/checkout/sessions", {"created": {"gte": created_gte}, "status": "complete"}
        )

    def list_webhook_endpoints(self) -> list[dict[str, Any]]:
        return list(self._iterate("/v1/webhook_endpoints", {}))

    # Writes: always with our idempotency key

    def create_coupon(self, params: dict[str, Any], idempotency_key: str) -> Reply:
        return _reply(
            self._call(
                self._client.v1.coupons.create,
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        )

    def create_promotion_code(self, params: dict[str, Any], idempotency_key: str) -> Reply:
        return _reply(
            self._call(
                self._client.v1.promotion_codes.create,
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        )

    def update_promotion_code(
        self, promotion_code_id: str, params: dict[str, Any], idempotency_key: str
    ) -> Reply:
        return _reply(
            self._call(
                self._client.v1.promotion_codes.update,
                promotion_code_id,
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        )


def client_from_settings(settings: Settings) -> StripeApi:
    """The client for this deployment: the real account with a key, the stand-in without one.

    Production refuses STRIPE_API_BASE (core.settings), so the stand-in is development-only."""
    if settings.stripe_secret_key is not None:
        return StripeApi(
            settings.stripe_secret_key.get_secret_value(), api_base=settings.stripe_api_base
        )
    if settings.stripe_api_base and not settings.is_production:
        return StripeApi(STANDIN_KEY, api_base=settings.stripe_api_base)
    raise StripeAuthError(
        "Stripe is not configured: set STRIPE_SECRET_KEY, or STRIPE_API_BASE to use the local "
        "stand-in (python -m core standin)."
    )


# --- Idempotent actions -------------------------------------------------------------------------


def action_key(kind: str, target: str, token: str, params: dict[str, Any] | None = None) -> str:
    """What makes two requests the same action: its kind, its target, the form instance that
    sent it (`token`, kept across reruns of one form) and a digest of what it asks for."""
    digest = hashlib.sha256(
        json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:16]
    return f"{kind}:{target}:{token}:{digest}"[:255]


def new_token() -> str:
    """A fresh token for a new action (one per form instance in the UI)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ActionResult:
    data: dict[str, Any] | None  # None when the action had already succeeded earlier
    result_id: str | None
    request_id: str | None
    idempotency_key: str
    already_done: bool = False


def _claim(engine: Engine, actor: Actor, kind: str, key: str) -> tuple[StripeAction, bool]:
    """The stored action for `key`, created with a new idempotency key if it is new.
    An action whose outcome is unknown (pending) keeps its key: Stripe will replay the result.
    One that Stripe rejected gets a new key, since the retry is a new request."""
    with session_scope(engine) as session:
        insert_ignore(
            session,
            StripeAction,
            {
                "action_key": key,
                "kind": kind,
                "idempotency_key": f"{kind}-{uuid.uuid4()}",
                "actor": actor.username,
                "status": "pending",
            },
            ["action_key"],
        )
        row = session.execute(
            select(StripeAction).where(StripeAction.action_key == key).with_for_update()
        ).scalar_one()
        if row.status == "succeeded":
            return row, True
        if row.status == "failed":
            row.idempotency_key = f"{kind}-{uuid.uuid4()}"
            row.status = "pending"
            row.error = None
        return row, False


def run_action(
    engine: Engine,
    actor: Actor,
    *,
    kind: str,
    key: str,
    call: Callable[[str], Reply],
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> ActionResult:
    """Perform one mutating Stripe call at most once per action key, and audit it.

    `call` receives the idempotency key to send. A Stripe error is recorded (pending when the
    outcome is unknown, failed when Stripe rejected it), audited, and re-raised."""
    row, done = _claim(engine, actor, kind, key)
    if done:
        return ActionResult(None, row.result_id, row.stripe_request_id, row.idempotency_key, True)
    idem = row.idempotency_key
    try:
        reply = call(idem)
    except StripeProblem as problem:
        status = "pending" if isinstance(problem, StripeUnavailable) else "failed"
        with session_scope(engine) as session:
            stored = session.execute(
                select(StripeAction).where(StripeAction.action_key == key).with_for_update()
            ).scalar_one()
            stored.status = status
            stored.error = problem.message
            stored.stripe_request_id = problem.request_id
            audit.record(
                session,
                actor,
                f"{kind}.failed",
                target,
                {**(details or {}), "error": problem.message, "outcome": status},
                stripe_request_id=problem.request_id,
                idempotency_key=idem,
            )
        raise
    result_id = reply.data.get("id") if isinstance(reply.data.get("id"), str) else None
    with session_scope(engine) as session:
        stored = session.execute(
            select(StripeAction).where(StripeAction.action_key == key).with_for_update()
        ).scalar_one()
        stored.status = "succeeded"
        stored.error = None
        stored.stripe_request_id = reply.request_id
        stored.result_id = result_id
        audit.record(
            session,
            actor,
            kind,
            result_id or target,
            details,
            stripe_request_id=reply.request_id,
            idempotency_key=idem,
        )
    return ActionResult(reply.data, result_id, reply.request_id, idem)
