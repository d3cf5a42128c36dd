"""The helpers behind "untrusted text is shown as text" (issue 12, part A): core/text.py and
dashboard/safe.py, as plain functions, plus the CSV download of finding 4 end to end."""

from __future__ import annotations

import csv
import io
from html import unescape

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from core.text import csv_cell, slack, visible
from dashboard import inputs, safe, widgets
from tests.ui.test_hostile import markup_in

HOSTILE = [
    "![x](http://evil.example/i.png)",
    "[pay here](http://evil.example/pay)",
    '<a href="http://evil.example">x</a>',
    "<img src=x onerror=alert(1)>",
    "http://evil.example/a https://evil.example/b www.evil.example mallory@evil.example",
    "x\n===",
    "- list\n+ list\n1. list\n> quote\n# heading",
    "***",
    "`code` ``two``",
    ":red[red] :material/warning: :smile:",
    "$x^2$ ~~strike~~ **bold** _em_ __strong__",
    "a | b\n--|--\n1 | 2",
    "&lt;b&gt; &#x3C;b&#x3E;",
    "\\*not emphasis\\*",
    "\u202edesrever\u202c and zero\u200bwidth",
    "    indented code",
    "A" * 5_000,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_inline_leaves_no_markup(value: str) -> None:
    """[A] ids, emails, notes, decline codes: nothing in them is read as markdown."""
    assert not markup_in(safe.inline(value))
    assert not markup_in(str(safe.md("**{}** · {}", value, safe.mono(value))))


@pytest.mark.parametrize("value", [v for v in HOSTILE if v.isascii() and len(v) < 500])
def test_inline_reads_as_exactly_the_text(value: str) -> None:
    """Escaping changes how it parses, not what it says (newlines become spaces; a word joiner
    after `@`, `www` and `http` is invisible)."""
    rendered = MarkdownIt("commonmark").renderInline(safe.inline(value))
    expected = " ".join(value.split())
    read = unescape(rendered).replace(safe.WORD_JOINER, "")  # invisible, keeps links away
    assert " ".join(read.split()) == expected


def test_mono_keeps_backticks_and_an_id_whole() -> None:
    """Finding 1: a backtick in an id closed the code span around it."""
    crafted = "cus_`![c](http://evil.example/c.png)`"
    tokens = MarkdownIt("commonmark").parseInline(str(safe.mono(crafted)))[0].children or []
    assert [t.type for t in tokens] == ["code_inline"]
    assert tokens[0].content == crafted


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\u202eabc\u202c", "[U+202E]abc[U+202C]"),
        ("\u2066x\u2069 \u200f \u061c", "[U+2066]x[U+2069] [U+200F] [U+061C]"),
        ("zero\u200bwidth\ufeff", "zero[U+200B]width[U+FEFF]"),
        ("a\nb\tc\rd", "a b c d"),
        ("bell\x07", "bell[U+0007]"),
        ("line\u2028sep", "line[U+2028]sep"),
        ("jenny.rosen@example.com", "jenny.rosen@example.com"),
        ("Zoë Ångström 山田", "Zoë Ångström 山田"),
    ],
)
def test_visible_neutralises_bidi_zero_width_and_controls(value: str, shown: str) -> None:
    """[A] bidirectional controls (a right-to-left override reverses a line) and zero-width
    characters show as what they are."""
    assert visible(value) == shown


def test_visible_keeps_lines_where_asked_and_cuts_long_text() -> None:
    assert visible("a\r\nb", multiline=True) == "a\nb"
    assert visible("x" * 10, limit=5) == "xxxx…"


def test_chart_text_escapes_what_plotly_reads_as_html() -> None:
    """Finding 3: plotly renders <a href> in labels and hover text."""
    assert (
        safe.chart_text('<a href="http://e">pay</a> & co')
        == '&lt;a href="http://e"&gt;pay&lt;/a&gt; &amp; co'
    )


def test_slack_escapes_mrkdwn_control_characters() -> None:
    """[A] alerts: Slack reads <url|label>, <!channel> and &-entities."""
    assert slack("<!channel> <http://evil|click> & \u202e") == (
        "&lt;!channel&gt; &lt;http://evil|click&gt; &amp; [U+202E]"
    )


@pytest.mark.parametrize(
    "cell",
    ['=HYPERLINK("http://evil.example","pay")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"],
)
def test_formula_cells_get_a_leading_quote(cell: str) -> None:
    """Finding 4: cells that start a formula come out as text."""
    assert csv_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["insufficient_funds", "jenny@example.com", "a=b", " -1"])
def test_other_cells_are_left_alone(cell: str) -> None:
    assert csv_cell(cell) == cell


def test_csv_download_neutralises_formulas_and_is_rfc_4180() -> None:
    """Finding 4 end to end: what the Download button sends (widgets.csv_download's bytes)."""
    frame = pd.DataFrame(
        {
            "decline_code": ['=HYPERLINK("http://evil.example","pay")', "+1+1", "-2+3", "@SUM(A1)"],
            "failures": [3, -2, 1, 0],
            "note": ['said "hi"', "two\nlines", "a,b", "plain"],
        }
    )
    data = safe.csv_bytes(frame)
    assert b"\r\n" in data and data.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert rows[0] == ["decline_code", "failures", "note"]
    assert [row[0] for row in rows[1:]] == [
        '\'=HYPERLINK("http://evil.example","pay")',
        "'+1+1",
        "'-2+3",
        "'@SUM(A1)",
    ]
    assert [row[1] for row in rows[1:]] == ["3", "-2", "1", "0"]  # numbers stay numbers
    assert [row[2] for row in rows[1:]] == ['said "hi"', "two\nlines", "a,b", "plain"]
    assert widgets.csv_download.__doc__ and "formulas" in widgets.csv_download.__doc__


def test_tables_show_cells_as_visible_text() -> None:
    shown = safe.safe_frame([{"email": "\u202emoc.x@y", "n": 1, "none": None}])
    assert shown.iloc[0].tolist() == ["[U+202E]moc.x@y", 1, None]


def test_money_never_shows_a_currency_that_is_not_a_code() -> None:
    assert widgets.money(2500, "usd") == "USD 25.00"
    assert widgets.money(2500, "<b>x</b>") == "2,500 (unknown currency)"


@pytest.mark.parametrize(
    ("raw", "value"), [("42", 42), (" 7 ", 7), ("", None), (None, None), ("9" * 18, int("9" * 18))]
)
def test_order_ids_that_parse(raw: str | None, value: int | None) -> None:
    assert inputs.order_id(raw) == (value, None)


@pytest.mark.parametrize("raw", ["²", "٣", "99999999999999999999", "0", "-1", "1e3", "4 2", "0x10"])
def test_order_ids_refused_with_a_message(raw: str) -> None:
    """Finding 7: `²` is a digit to str.isdigit but not to int; 20 digits overflow the database."""
    value, problem = inputs.order_id(raw)
    assert value is None and problem and "is not an order id" in problem


@pytest.mark.parametrize("raw", ["jenny\U0010ffff", "x\u202e", "a\x00b", "a" * 255])
def test_searches_refused_with_a_message(raw: str) -> None:
    """Finding 7: a search ending in U+10FFFF raised in the query."""
    value, problem = inputs.search_text(raw)
    assert value == "" and problem


def test_a_search_pasted_from_the_console_drops_its_word_joiners() -> None:
    shown = safe.inline("jenny.rosen@example.com")
    pasted = shown.replace("\\", "")  # what a person copies from the rendered page
    assert inputs.search_text(pasted) == ("jenny.rosen@example.com", None)
