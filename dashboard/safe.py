"""Untrusted text on the dashboard: shown as text, never as markdown or HTML (issue 12).

Streamlit reads markdown in `st.markdown`, captions, titles, alerts (`st.error`...), metric
labels, values and deltas, widget labels and help; plotly reads a subset of HTML in chart
labels and hover text. Anything from Stripe, a customer or a colleague reaching one of those
would be markup: an image loaded from another server, a link, a heading, red text.

The convention, checked by tests/ui/test_markup_rule.py over pages/ and dashboard/:

- A markdown sink gets a string literal (the console's own words) or a `Markdown` value.
- `md(template, *values)` is the only way to make `Markdown` from data: the template is the
  console's literal markdown, every value is escaped (`inline`); `mono(value)` is a value in
  a code span. `str.format` specs work (`md("{:,} orders", total)`).
- The widgets that take a message (`widgets.error(message)`, `widgets.caption(...)`, ...)
  escape a plain `str` entirely and pass `Markdown` as it is: handing them data is safe.
- Tables (`st.dataframe`) and option labels are not markdown; `plain` still neutralises
  bidirectional and zero-width characters there. Charts take `chart_text`.

The unsafe path, `st.markdown(f"...{value}...")`, is refused by that test."""

from __future__ import annotations

import html
import re
from string import Formatter
from typing import Any, LiteralString

import pandas as pd

from core.text import csv_cell, visible

# Longest piece of data drawn inside markdown or a chart; tables keep the whole value.
INLINE_LIMIT = 500
# What starts markdown or HTML in one line of text (values never carry a newline into markdown):
# always escaped: backslash, code, emphasis, links and images, HTML, tables, $ maths, ~~strike~~,
# entities, email autolinks; `:` before a word (`:red[...]`, `:material/...:`, `https://`);
# `_` at a word's edge (inside `insufficient_funds` it is no emphasis); the dot of `www.`.
_ALWAYS = re.compile(r"([\\`*\[\]<>|$~&@])")
_COLON = re.compile(r":(?=\S)")
_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_WWW = re.compile(r"(?i)(?<=www)\.")
# Streamlit's markdown (remark-gfm) finds `www.`, `http://` and emails in the text *after*
# escapes are resolved, so no escape stops them becoming links: a WORD JOINER (U+2060, no width,
# no break) after `www`, `http`/`https` and `@` does. The search box drops it again on paste.
WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(?:\bwww(?=\.)|\bhttps?(?=:)|\bftp(?=:)|@)")
# At the start of a line: lists, headings, quotes, setext and thematic breaks, ordered lists.
_LINE_START = re.compile(r"^([-+=#>]|\d+[.)])")


class Markdown(str):
    """Markdown the console wrote: a literal template with escaped values (see `md`)."""

    __slots__ = ()


def inline(value: object, *, limit: int = INLINE_LIMIT) -> str:
    """`value` as markdown that reads as exactly its text, on one line (outer spaces dropped)."""
    text = _AUTOLINK.sub(lambda m: m.group(0) + WORD_JOINER, visible(value, limit=limit).strip())
    text = _ALWAYS.sub(r"\\\1", text)
    text = _COLON.sub(r"\\:", text)
    text = _UNDERSCORE.sub(r"\\_", text)
    text = _WWW.sub(r"\\.", text)
    return _LINE_START.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], text)


def plain(value: object, *, multiline: bool = False, limit: int | None = None) -> str:
    """`value` for a place that shows text as text (table cell, option label, `st.text`)."""
    return visible(value, multiline=multiline, limit=limit)


def mono(value: object, *, limit: int = INLINE_LIMIT) -> Markdown:
    """`value` in a code span: nothing inside is markup; the fence is longer than any run of
    backticks in the value, and the padding keeps a value that starts or ends with one."""
    text = visible(value, limit=limit) or " "
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return Markdown(f"{fence} {text} {fence}")


class _Escaping(Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markdown):
            return str(value)
        return inline(super().format_field(value, format_spec))


_FORMATTER = _Escaping()


def md(template: LiteralString, *values: object, **named: object) -> Markdown:
    """The console's own markdown `template` with `values` filled in as text."""
    return Markdown(_FORMATTER.format(template, *values, **named))


def body(value: object) -> str:
    """What a markdown sink gets: `Markdown` as it is, anything else as escaped text."""
    return str(value) if isinstance(value, Markdown) else inline(value)


def chart_text(value: object) -> str:
    """A chart label or hover text: plotly reads `<a href>`, `<b>`, `<span style>`, `<br>`
    and entities, so `&`, `<` and `>` are escaped (plotly shows the entities as characters)."""
    return html.escape(visible(value, limit=INLINE_LIMIT), quote=False)


def chart_texts(values: Any) -> list[str]:
    return [chart_text(value) for value in values]


def safe_frame(data: Any) -> pd.DataFrame:
    """A table's rows with every text cell passed through `plain` (numbers, dates untouched)."""
    shown = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    for column in shown.columns:
        if shown[column].dtype == object or pd.api.types.is_string_dtype(shown[column]):
            shown[column] = shown[column].map(
                lambda cell: plain(cell, multiline=True) if isinstance(cell, str) else cell
            )
    shown.columns = [plain(column) for column in shown.columns]
    return shown


def csv_bytes(data: pd.DataFrame) -> bytes:
    """RFC 4180 CSV (CRLF, quotes doubled, fields quoted when needed) whose text cells cannot
    run as formulas in a spreadsheet (`core.text.csv_cell`). Numbers stay numbers."""
    shown = data.copy()
    for column in shown.columns:
        if shown[column].dtype == object or pd.api.types.is_string_dtype(shown[column]):
            shown[column] = shown[column].map(
                lambda cell: csv_cell(cell) if isinstance(cell, str) else cell
            )
    shown.columns = [csv_cell(str(column)) for column in shown.columns]
    return shown.to_csv(index=False, lineterminator="\r\n").encode()
