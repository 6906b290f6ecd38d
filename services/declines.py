"""A gateway's refusal in words a member can act on: why the card was declined, and
what to do about it. Stripe's decline codes are the vocabulary; an unknown code
falls back to the gateway's own sentence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decline:
    reason: str
    what_to_do: str


_ANOTHER_CARD = "Pay with another card, or ask your bank why it was declined."
_WORDS: dict[str, Decline] = {
    "insufficient_funds": Decline(
        "The card has insufficient funds.", "Add funds or pay with another card."
    ),
    "expired_card": Decline("The card has expired.", "Save a new card in the app and pay again."),
    "incorrect_cvc": Decline(
        "The card's security code was incorrect.", "Check the code and pay again."
    ),
    "incorrect_number": Decline(
        "The card number was incorrect.", "Save the card again in the app and pay again."
    ),
    "lost_card": Decline("The card was reported lost.", "Pay with another card."),
    "stolen_card": Decline("The card was reported stolen.", "Pay with another card."),
    "card_velocity_exceeded": Decline(
        "The card's limit was reached.", "Pay with another card, or try again later."
    ),
    "authentication_required": Decline(
        "Your bank asks you to confirm this payment yourself.",
        "Pay the invoice in the app, where your bank can ask you to confirm it.",
    ),
    "processing_error": Decline(
        "The card could not be processed.", "Try again in a few minutes, or use another card."
    ),
    "generic_decline": Decline("The card was declined by its bank.", _ANOTHER_CARD),
    "card_declined": Decline("The card was declined by its bank.", _ANOTHER_CARD),
    "do_not_honor": Decline("The card was declined by its bank.", _ANOTHER_CARD),
}


def decline_words(code: str | None, message: str | None) -> Decline:
    """Why a payment failed and what to do, for an e-mail or the pay page."""
    known = _WORDS.get((code or "").strip().lower())
    if known is not None:
        return known
    reason = (message or "").strip() or "The payment could not be completed."
    if not reason.endswith("."):
        reason += "."
    return Decline(reason, _ANOTHER_CARD)
