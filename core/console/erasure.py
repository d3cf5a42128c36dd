"""Erasure on request (GDPR Article 17): pseudonymise one person's data everywhere we hold it.

    report = erase(session, actor, email="jenny@example.com", reason="ticket 4411", apply=False)

Who the person is: the email or customer id given, widened to every email and customer id
that orders and payment attempts link to them, the IP addresses of their attempts, and the
names Stripe sent with their objects (customer, billing and shipping details).

What changes: every text and JSON column of every table except the audit log is scanned
(generic, so tables added later are covered too), and each occurrence of those values,
inside stored event payloads as well, is replaced by a pseudonym (`erased-…@erased.invalid`,
`erased-ip-…`, `erased-name-…`; one pseudonym per value, so counts of distinct cards, emails
or IPs stay what they were). Amounts, states, times and ids are not touched, so totals and
rates are unchanged.

The audit log is kept as it is and its chain still verifies: it never held a raw email or IP
address (core.auth.audit records keyed pseudonyms), and names do not go into it. Free text an
operator typed (a note, a reason) outside the audit log is scanned like everything else.

`apply=False` is a dry run: the same report (tables, columns, row counts), nothing written.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, String, Text, Unicode, cast, false, func, or_, select, update
from sqlalchemy.orm import Session

from core.auth import audit
from core.auth.permissions import Actor, require
from core.models import AuditEntry, Base, Order, PaymentAttempt, StripeEvent

KEPT_TABLES = frozenset({AuditEntry.__tablename__, "alembic_version"})
# Staff data, not customers': usernames are never a customer's email or name.
STAFF_TABLES = frozenset({"login_attempts", "user_sessions"})
MIN_NAME_CHARS = 4  # shorter "names" would match unrelated text
_NAME_HOLDERS = ("customer_details", "billing_details", "shipping", "shipping_details")


class ErasureError(Exception):
    """The request cannot be carried out; the message is safe to show."""


@dataclass
class Person:
    emails: set[str] = field(default_factory=set)
    customer_ids: set[str] = field(default_factory=set)
    ips: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    def needles(self) -> dict[str, str]:
        """value (lower case) -> kind, for every value to replace."""
        found = {e: "email" for e in self.emails}
        found.update({ip: "ip" for ip in self.ips})
        found.update({n: "name" for n in self.names if len(n) >= MIN_NAME_CHARS})
        return found


@dataclass(frozen=True)
class ErasureReport:
    reference: str  # how the audit log names the person (a keyed pseudonym)
    found: dict[str, int]  # "emails", "ips", "names", "customers": how many values
    changes: dict[str, int]  # "table.column" -> rows changed (or that would be)
    applied: bool

    @property
    def rows(self) -> int:
        return sum(self.changes.values())

    def describe(self) -> str:
        verb = "changed" if self.applied else "would change (dry run)"
        head = (
            f"person {self.reference}: {self.found['emails']} email(s), {self.found['names']} "
            f"name(s), {self.found['ips']} IP address(es), {self.found['customers']} customer id(s)"
        )
        lines = [head, f"{self.rows} row(s) {verb}:"]
        lines += [f"  {where}: {count}" for where, count in sorted(self.changes.items())]
        return "\n".join(lines)


def _walk_names(value: Any, emails: set[str], names: set[str], holder: bool = False) -> None:
    if isinstance(value, dict):
        email = value.get("email")
        owned = holder or (isinstance(email, str) and email.strip().lower() in emails)
        name = value.get("name")
        if owned and isinstance(name, str) and name.strip():
            names.add(name.strip().lower())
        for key, item in value.items():
            _walk_names(item, emails, names, owned and key in _NAME_HOLDERS)
    elif isinstance(value, list):
        for item in value:
            _walk_names(item, emails, names, holder)


def find_person(session: Session, *, email: str | None, customer: str | None) -> Person:
    """Every value that identifies the person, starting from an email or a customer id."""
    person = Person()
    if email:
        person.emails.add(email.strip().lower())
    if customer:
        person.customer_ids.add(customer.strip())
    for _ in range(2):  # emails -> customers -> emails (one more hop is enough in practice)
        lowered = sorted(person.emails)
        ids = sorted(person.customer_ids)
        for table_email, table_customer in (
            (Order.customer_email, Order.customer_id),
            (PaymentAttempt.email, PaymentAttempt.customer_id),
        ):
            rows = session.execute(
                select(table_email, table_customer).where(
                    or_(func.lower(table_email).in_(lowered), table_customer.in_(ids))
                )
            ).all()
            for row_email, row_customer in rows:
                if row_email:
                    person.emails.add(row_email.strip().lower())
                if row_customer:
                    person.customer_ids.add(row_customer)
    ips = session.execute(
        select(PaymentAttempt.ip_address).where(
            or_(
                func.lower(PaymentAttempt.email).in_(sorted(person.emails)),
                PaymentAttempt.customer_id.in_(sorted(person.customer_ids)),
            ),
            PaymentAttempt.ip_address.is_not(None),
        )
    ).scalars()
    person.ips.update(ip.strip().lower() for ip in ips if ip and ip.strip())
    for payload in session.execute(
        select(StripeEvent.payload).where(
            _mentions(cast(StripeEvent.payload, Text), sorted(person.emails | person.customer_ids))
        )
    ).scalars():
        _walk_names(payload, person.emails, person.names)
        for ip in _metadata_ips(payload, person):
            person.ips.add(ip)
    return person


def _metadata_ips(payload: Any, person: Person) -> Iterable[str]:
    """metadata.client_ip of objects that belong to the person (DESIGN.md: where IPs come from)."""
    if isinstance(payload, dict):
        meta = payload.get("metadata")
        owner = payload.get("customer") in person.customer_ids or (
            str(payload.get("receipt_email") or payload.get("customer_email") or "").lower()
            in person.emails
        )
        if owner and isinstance(meta, dict) and isinstance(meta.get("client_ip"), str):
            yield meta["client_ip"].strip().lower()
        for item in payload.values():
            yield from _metadata_ips(item, person)
    elif isinstance(payload, list):
        for item in payload:
            yield from _metadata_ips(item, person)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _mentions(column: Any, needles: Iterable[str]) -> Any:
    forms: set[str] = set()
    for needle in needles:
        forms.add(needle.lower())
        forms.add(json.dumps(needle)[1:-1].lower())  # as JSON text stores it (\\u escapes)
    if not forms:
        return false()
    lowered = func.lower(column)
    return or_(*(lowered.like(f"%{_like_escape(f)}%", escape="\\") for f in sorted(forms)))


def _pattern(needles: dict[str, str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
    return re.compile(rf"(?<![\w.@+-])(?:{alternatives})(?![\w@-]|\.\w)", re.IGNORECASE)


class _Pseudonyms:
    def __init__(self, needles: dict[str, str]) -> None:
        self._needles = needles
        self._made: dict[str, str] = {}
        self.pattern = _pattern(needles)

    def __call__(self, match: re.Match[str]) -> str:
        value = match.group(0).lower()
        if value not in self._made:
            token = secrets.token_hex(6)
            kind = self._needles[value]
            self._made[value] = (
                f"erased-{token}@erased.invalid" if kind == "email" else f"erased-{kind}-{token}"
            )
        return self._made[value]

    def text(self, value: str) -> str:
        return self.pattern.sub(self, value)

    def data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.data(item) for item in value]
        return value


def _text_columns(table: Any) -> list[Any]:
    return [
        column
        for column in table.columns
        if isinstance(column.type, String | Text | Unicode | JSON)
        and not column.primary_key
        and not column.foreign_keys
    ]


def erase(
    session: Session,
    actor: Actor,
    *,
    email: str | None = None,
    customer: str | None = None,
    reason: str,
    apply: bool,
) -> ErasureReport:
    """Pseudonymise the person's data (or, with apply=False, report what would change).
    Runs in the caller's transaction; audited when applied."""
    require(actor, "personal_data.erase")
    if bool(email) == bool(customer):
        raise ErasureError("Give either an email address or a customer id (cus_…).")
    if customer and not customer.strip().startswith("cus_"):
        raise ErasureError("A customer id starts with cus_.")
    if email and "@" not in email:
        raise ErasureError("That is not an email address.")
    if apply and len(reason.strip()) < 5:
        raise ErasureError("Give the reason for the erasure (the request's reference).")
    person = find_person(session, email=email, customer=customer)
    reference = audit.pseudonym("email", email) if email else f"customer:{(customer or '').strip()}"
    needles = person.needles()
    changes: dict[str, int] = {}
    pseudonyms = _Pseudonyms(needles) if needles else None
    for table in Base.metadata.sorted_tables:
        if pseudonyms is None or table.name in KEPT_TABLES | STAFF_TABLES:
            continue
        keys = list(table.primary_key.columns)
        for column in _text_columns(table):
            is_json = isinstance(column.type, JSON)
            text_form = cast(column, Text) if is_json else column
            rows = session.execute(select(*keys, column).where(_mentions(text_form, needles))).all()
            changed = 0
            for row in rows:
                old = row[-1]
                new = pseudonyms.data(old) if is_json else pseudonyms.text(str(old))
                if new == old:
                    continue
                changed += 1
                if apply:
                    match = [key == value for key, value in zip(keys, row[:-1], strict=True)]
                    session.execute(update(table).where(*match).values({column.name: new}))
            if changed:
                changes[f"{table.name}.{column.name}"] = changed
    found = {
        "emails": len(person.emails),
        "ips": len(person.ips),
        "names": len([n for n in person.names if len(n) >= MIN_NAME_CHARS]),
        "customers": len(person.customer_ids),
    }
    report = ErasureReport(reference, found, changes, apply)
    if apply:
        audit.record(
            session,
            actor,
            "personal_data.erased",
            reference,
            {"reason": reason.strip(), "rows": report.rows, "changes": changes, "found": found},
        )
    return report
