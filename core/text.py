"""Untrusted text made inert for whatever shows it (issue 12).

Everything the console shows or sends came from Stripe, a customer or a colleague: ids, emails,
names, metadata, decline codes, notes. It is text, never markup. This module holds the rules
that do not depend on a UI, so the dashboard (dashboard/safe.py), alerts (Slack) and exports
share them:

- `visible`: invisible characters that change how text reads are shown as `[U+XXXX]`:
  bidirectional controls (a right-to-left override reverses a line), zero-width characters
  (two ids that look equal are not), every other format or control character, surrogates and
  line separators. Newlines stay only where the text may have several lines.
- `slack`: Slack's mrkdwn escapes (`&`, `<`, `>`: the only characters Slack asks to escape).
- `csv_cell`: a cell a spreadsheet would run as a formula gets a leading `'` (OWASP).
"""

from __future__ import annotations

import unicodedata

# Categories shown as [U+XXXX]: format (bidi controls, zero-width, soft hyphen, BOM), control,
# surrogate, line and paragraph separators. Zero-width joiners inside emoji are format
# characters too: an operator console would rather show them than hide one.
_HIDDEN = {"Cf", "Cc", "Cs", "Zl", "Zp"}
ELLIPSIS = "…"
# A spreadsheet starts a formula at any of these (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _shown(char: str, multiline: bool) -> str:
    if char == "\n":
        return char if multiline else " "
    if char == "\t":
        return " "
    if char == "\r":
        return "" if multiline else " "
    if unicodedata.category(char) in _HIDDEN:
        return f"[U+{ord(char):04X}]"
    return char


def visible(value: object, *, multiline: bool = False, limit: int | None = None) -> str:
    """`value` as text whose every character shows: see the module docstring. `limit` cuts
    a longer text (after neutralising) and marks the cut with an ellipsis."""
    text = "" if value is None else str(value)
    if text.isascii() and text.isprintable():
        shown = text  # the common case: nothing to neutralise
    else:
        shown = "".join(_shown(char, multiline) for char in text)
    if limit is not None and len(shown) > limit:
        shown = shown[: max(limit - 1, 0)] + ELLIPSIS
    return shown


def slack(value: object) -> str:
    """Text for a Slack message (`text` with mrkdwn): visible, and `&`, `<`, `>` escaped so no
    link, mention or channel ping can be written into it by data."""
    text = visible(value, multiline=True)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def csv_cell(value: str) -> str:
    """A cell a spreadsheet would evaluate (`=HYPERLINK(...)`, `+1+1`, `-2+3`, `@SUM(...)`, or
    one starting with a tab or carriage return) gets a leading `'`, shown as text."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value
