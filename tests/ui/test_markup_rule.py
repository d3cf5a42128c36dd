"""The one rule for output, checked in the code (issue 12, [A] "one small helper or convention that
pages cannot get wrong"): every argument Streamlit reads as markdown is either the console's own
literal text or markdown built by `md(...)` / `mono(...)` (dashboard/safe.py), which escapes the
data in it. `st.markdown(f"...{value}...")`, `st.error(message)`, `col.metric("Status", status)`
are refused here; `widgets.error(message)`, `st.markdown(widgets.md("**{}**", value))` pass.

Module constants (UPPER_CASE names) are the console's own text. Numbers are allowed inside
f-strings when formatted as numbers or dates (`{total:,}`, `{at:%Y-%m-%d}`), and so are the
money and rate formatters of dashboard/widgets.py, whose output is digits, signs and a currency
code made of letters. A parameter carrying the console's own text (a widget's label) is marked
on its line with `# markup: console text`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = sorted([*(ROOT / "pages").glob("*.py"), *(ROOT / "dashboard").glob("*.py")])
SAFE_MODULE = ROOT / "dashboard" / "safe.py"  # where the escaping itself lives

_LABEL = (0, "label", "help")
_BODY = (0, "body", "help")
# Streamlit element -> the arguments it renders as markdown (positions and keywords).
MARKDOWN_ARGUMENTS: dict[str, tuple[int | str, ...]] = {
    **dict.fromkeys(
        ("markdown", "caption", "title", "header", "subheader", "info", "warning", "error",
         "success", "toast", "latex"),
        _BODY,
    ),
    "write": (0, 1, 2, 3),
    "metric": (0, 1, 2, "label", "value", "delta", "help"),
    "page_link": ("label", "help"),
    "tabs": (0,),
    **dict.fromkeys(
        ("expander", "popover", "status", "button", "download_button", "form_submit_button",
         "checkbox", "toggle", "radio", "selectbox", "multiselect", "text_input", "text_area",
         "number_input", "date_input", "time_input", "slider", "select_slider",
         "segmented_control", "pills", "file_uploader", "color_picker", "chat_input"),
        _LABEL,
    ),
}  # fmt: skip
# Receivers whose methods of these names escape their argument themselves.
SAFE_RECEIVERS = {"widgets", "safe"}
# Calls whose result is safe markdown: built by the escaping helpers, or numbers and money.
SAFE_CALLS = {
    "md", "mono", "body", "inline", "money", "money_compact", "money_delta_compact", "percent",
    "count_delta", "rate_delta",
    "money_delta", "period_label", "len", "int",
}  # fmt: skip
NUMERIC_SPEC = set(",.%df")
# On the line of an argument is the console's own text passed through a parameter
# (e.g. a widget's label), with the reason after it.
EXEMPT = "# markup: console text"


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def safe(node: ast.expr | None) -> bool:
    """True when `node` can only be literal text, escaped data, or a number."""
    match node:
        case None | ast.Constant():
            return True
        case ast.JoinedStr(values=parts):
            return all(safe(part) for part in parts)
        case ast.FormattedValue(value=value, format_spec=spec):
            if spec is not None and NUMERIC_SPEC & set(ast.unparse(spec)):
                return True
            return safe(value)
        case ast.Call(func=func):
            return _name(func) in SAFE_CALLS
        case ast.Name() | ast.Attribute():
            name = _name(node) or ""
            return name.isupper()  # a module constant: the console's own words
        case ast.IfExp(body=yes, orelse=no):
            return safe(yes) and safe(no)
        case ast.BinOp(left=left, op=ast.Add(), right=right):
            return safe(left) and safe(right)
        case ast.List(elts=items) | ast.Tuple(elts=items):
            return all(safe(item) for item in items)
    return False


def _sinks(func: ast.expr) -> list[str]:
    """The Streamlit element names a call's function may be (`(st.success if ok else
    st.error)(message)` is both)."""
    if isinstance(func, ast.IfExp):
        return _sinks(func.body) + _sinks(func.orelse)
    if isinstance(func, ast.Attribute) and func.attr in MARKDOWN_ARGUMENTS:
        receiver = _name(func.value)
        return [] if receiver in SAFE_RECEIVERS else [func.attr]
    return []


def violations(source: str, filename: str = "<page>") -> list[str]:
    found = []
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        for sink in _sinks(node.func):
            for where in MARKDOWN_ARGUMENTS[sink]:
                if isinstance(where, int):
                    arg = node.args[where] if where < len(node.args) else None
                else:
                    arg = next((k.value for k in node.keywords if k.arg == where), None)
                if arg is not None and EXEMPT in lines[arg.lineno - 1]:
                    continue
                if isinstance(arg, ast.Starred) or not safe(arg):
                    found.append(
                        f"{filename}:{node.lineno}: {sink}() argument {where!r} is not literal "
                        f"text or md(...): {ast.unparse(arg) if arg else ''}"
                    )
    return found


@pytest.mark.parametrize("path", [p for p in CHECKED if p != SAFE_MODULE], ids=lambda p: p.name)
def test_markdown_sinks_get_literal_text_or_escaped_markdown(path: Path) -> None:
    """Findings 1, 2 and 3 came from data interpolated into markdown; this keeps it out."""
    problems = violations(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        'st.markdown(f"Customer `{order.customer_id}`")',  # finding 1, as it was
        'st.info(f"{flag.status.capitalize()} by {flag.reviewed_by}: {flag.note}")',  # finding 2
        "st.error(outcome.message)",
        'status.metric("Status", order.status)',
        'st.warning("**" + code + "**")',
        "(st.success if ok else st.error)(message)",
        'st.selectbox(f"Open {label}", options)',
        'st.caption(help="x", body=text)',
    ],
)
def test_the_rule_refuses_data_in_markdown(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        'st.markdown("**Refunded amount**")',
        'st.markdown(widgets.md("Customer {}", widgets.mono(order.customer_id)))',
        'st.caption(f"{total:,} orders, showing {offset + 1:,}–{offset + shown:,}")',
        "st.warning(STANDIN_NOTICE)",
        "widgets.error(outcome.message)",
        'col.metric("Amount", widgets.money(order.amount_total, order.currency))',
        'st.header(md("Order {}", order.id))',
    ],
)
def test_the_rule_lets_literals_and_escaped_markdown_through(source: str) -> None:
    assert not violations(source)
