"""Decline and failure codes in Stripe's words, for people: the Orders timeline, the Payments
charts and tables, exports. The code itself stays beside the words (support quotes it to Stripe).

Descriptions follow Stripe's documentation of decline codes and payment error codes, shortened
to what support and finance need; an unknown code is shown as itself.
"""

from __future__ import annotations

DECLINES: dict[str, str] = {
    "approve_with_id": "The payment can't be authorised",
    "authentication_required": "The card requires authentication (3D Secure)",
    "call_issuer": "Declined for an unknown reason; the customer should call their bank",
    "card_declined": "The card was declined",
    "card_not_supported": "The card doesn't support this type of purchase",
    "card_velocity_exceeded": "The balance or credit limit on the card was exceeded",
    "currency_not_supported": "The card doesn't support this currency",
    "do_not_honor": "Declined by the bank for an unknown reason",
    "do_not_try_again": "Declined for an unknown reason; don't retry",
    "duplicate_transaction": "An identical payment was just made with this card",
    "expired_card": "The card has expired",
    "fraudulent": "Declined as suspected fraud",
    "generic_decline": "Declined for an unknown reason",
    "highest_risk_level": "Blocked by Radar: highest risk",
    "incorrect_cvc": "The CVC number is incorrect",
    "incorrect_number": "The card number is incorrect",
    "incorrect_zip": "The postal code is incorrect",
    "insufficient_funds": "The card has insufficient funds",
    "invalid_account": "The card or account is invalid",
    "invalid_amount": "The amount is invalid or exceeds what the card allows",
    "invalid_cvc": "The CVC number is invalid",
    "invalid_expiry_month": "The expiry month is invalid",
    "invalid_expiry_year": "The expiry year is invalid",
    "invalid_number": "The card number is invalid",
    "issuer_not_available": "The card's bank could not be reached",
    "lost_card": "The card was reported lost",
    "merchant_blacklist": "Blocked by a block list",
    "new_account_information_available": "The card or account is invalid; the bank has new details",
    "no_action_taken": "Declined for an unknown reason",
    "not_permitted": "The payment is not permitted",
    "offline_pin_required": "The card requires a PIN",
    "online_or_offline_pin_required": "The card requires a PIN",
    "pickup_card": "The card can't be used (reported lost or stolen)",
    "pin_try_exceeded": "Too many PIN attempts",
    "processing_error": "An error occurred while processing the card",
    "reenter_transaction": "The bank could not process the payment; try again",
    "restricted_card": "The card can't be used (reported lost or stolen)",
    "revocation_of_all_authorizations": "Declined for an unknown reason",
    "revocation_of_authorization": "Declined for an unknown reason",
    "security_violation": "Declined for an unknown reason",
    "service_not_allowed": "Declined for an unknown reason",
    "stolen_card": "The card was reported stolen",
    "stop_payment_order": "Declined for an unknown reason",
    "testmode_decline": "A Stripe test card number was used",
    "transaction_not_allowed": "Declined for an unknown reason",
    "try_again_later": "Declined for an unknown reason; try again later",
    "withdrawal_count_limit_exceeded": "The card's balance or credit limit was exceeded",
    # Payment error codes (failure_code) that are not decline codes
    "card_decline_rate_limit_exceeded": "Too many declines on this card in a short time",
    "expired_or_canceled_card": "The card has expired or was cancelled",
    "payment_intent_authentication_failure": "The customer failed 3D Secure authentication",
    "rule": "Blocked by a Radar rule",
}


def decline_words(code: str | None) -> str | None:
    """What `code` means, in Stripe's words; None for no code, the code itself when unknown."""
    if not code:
        return None
    return DECLINES.get(code, code)


def decline_label(code: str | None) -> str | None:
    """Words and code together, e.g. "The card has insufficient funds (insufficient_funds)"."""
    words = decline_words(code)
    if words is None or words == code:
        return words
    return f"{words} ({code})"


# Dispute reasons (dispute.reason), in Stripe's words.
DISPUTE_REASONS: dict[str, str] = {
    "bank_cannot_process": "The bank cannot process the payment",
    "check_returned": "The check was returned",
    "credit_not_processed": "The customer says a refund or credit was not processed",
    "customer_initiated": "The customer asked their bank to reverse the payment",
    "debit_not_authorized": "The customer says they did not authorise the debit",
    "duplicate": "The customer says they were charged twice",
    "fraudulent": "The cardholder says they did not make the payment (fraud)",
    "general": "Uncategorised dispute",
    "incorrect_account_details": "The account details were incorrect",
    "insufficient_funds": "The customer's account had insufficient funds",
    "noncompliant": "The payment did not comply with the card network's rules",
    "product_not_received": "The customer says the product was not received",
    "product_unacceptable": "The customer says the product was defective or not as described",
    "subscription_canceled": "The customer says they had cancelled the subscription",
    "unrecognized": "The customer does not recognise the payment",
}


def dispute_reason_label(code: str | None) -> str | None:
    """A dispute reason in words with the code beside it, e.g. "... (product_not_received)"."""
    if not code:
        return None
    words = DISPUTE_REASONS.get(code)
    return f"{words} ({code})" if words else code
