"""Parsers for what a person types or puts in a URL (issue 12, finding 7).

Each returns (value, problem): the value when the input is usable, otherwise None and a short
message saying what was wrong, safe to show (through the widgets, as text). None of them
raises: `?order=²` (a digit to `str.isdigit`, not to `int`), `?order=99999999999999999999`
(past the database's integers) or a search ending in U+10FFFF (a noncharacter) are refused
here, before any query."""

from __future__ import annotations

import re

from core.text import visible
from dashboard.safe import WORD_JOINER

# Order ids are positive 64-bit integers: at most 18 ASCII digits always fits.
_ORDER_ID = re.compile(r"[0-9]{1,18}")
MAX_SEARCH = 254  # the longest email address; every id we search by is shorter
_QUOTED = 40  # how much of a refused value a message repeats


def _quoted(raw: str) -> str:
    return "“" + visible(raw, limit=_QUOTED) + "”"


def order_id(raw: str | None) -> tuple[int | None, str | None]:
    """An order id from `?order=` or a form: ASCII digits, at least 1; (None, None) if empty."""
    text = (raw or "").strip()
    if not text:
        return None, None
    if not _ORDER_ID.fullmatch(text) or int(text) < 1:
        return None, (
            f"{_quoted(text)} is not an order id: an order id is a whole number "
            "of at most 18 digits, such as 42."
        )
    return int(text), None


def search_text(raw: str | None) -> tuple[str, str | None]:
    """A search for orders: printable text of at most MAX_SEARCH characters; ("", problem)
    otherwise. Surrounding spaces are dropped; ("", None) means nothing to search."""
    # An email copied from the console carries the word joiners that keep it from being a link.
    text = (raw or "").replace(WORD_JOINER, "").strip()
    if len(text) > MAX_SEARCH:
        return "", f"The search is too long ({len(text):,} characters; at most {MAX_SEARCH})."
    odd = sorted({char for char in text if not char.isprintable() and char != " "})
    if odd:
        shown = ", ".join(f"U+{ord(char):04X}" for char in odd[:5])
        return "", (
            f"The search contains characters no email or id has ({shown}). "
            "Type or paste the email, order id, cs_…, pi_…, cus_… or card last4 again."
        )
    return text, None
