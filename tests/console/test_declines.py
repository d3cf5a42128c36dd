"""Decline codes shown in Stripe's words, with the code beside them."""

from __future__ import annotations

import pytest

from core.console.declines import decline_label, decline_words


@pytest.mark.parametrize(
    ("code", "words", "label"),
    [
        ("insufficient_funds", "The card has insufficient funds",
         "The card has insufficient funds (insufficient_funds)"),
        ("stolen_card", "The card was reported stolen",
         "The card was reported stolen (stolen_card)"),
        ("some_new_code", "some_new_code", "some_new_code"),
        (None, None, None),
        ("", None, None),
    ],
)  # fmt: skip
def test_codes_read_in_words_and_keep_the_code(
    code: str | None, words: str | None, label: str | None
) -> None:
    assert decline_words(code) == words
    assert decline_label(code) == label
