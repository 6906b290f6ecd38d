"""Inputs and payloads of the payment mutations (rules §6, §7): offline payments and
refunds, card payments and card setup through the gateway, refunds through it.

Amounts are decimal strings in the organization's currency. Offline methods have
their own enums so the schema itself says which methods may be recorded by hand:
card money only moves through the gateway.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import Enum

import strawberry

from schema.types import Account, Invoice, Payment


@strawberry.enum(description="How an offline payment was received.")
class OfflinePaymentMethod(Enum):
    CASH = "CASH"
    CHEQUE = "CHEQUE"
    BANK_TRANSFER = "BANK_TRANSFER"
    OTHER = "OTHER"


@strawberry.enum(description="How an offline refund was paid out.")
class OfflineRefundMethod(Enum):
    CASH = "CASH"
    BANK_TRANSFER = "BANK_TRANSFER"
    OTHER = "OTHER"


@strawberry.input(description="A payment received outside the gateway; partial is allowed.")
class RecordPaymentInput:
    invoice_id: strawberry.ID
    amount: Decimal
    method: OfflinePaymentMethod
    received_on: date | None = strawberry.field(
        default=None, description="Omit for today in the organization's timezone."
    )
    note: str | None = None


@strawberry.input(description="Refund part or all of a succeeded card payment.")
class RefundPaymentInput:
    payment_id: strawberry.ID
    amount: Decimal
    reason: str | None = None


@strawberry.input(description="Refund available credit onto the account's card payments.")
class RefundCreditInput:
    credit_note_id: strawberry.ID
    amount: Decimal
    reason: str | None = None


@strawberry.input(
    description="Record money paid back outside the gateway: give exactly one of "
    "paymentId (a refund of that payment) or creditNoteId (a pay-out of its credit)."
)
class RecordRefundInput:
    amount: Decimal
    method: OfflineRefundMethod
    payment_id: strawberry.ID | None = None
    credit_note_id: strawberry.ID | None = None
    reason: str | None = None


@strawberry.type
class PayInvoicePayload:
    payment: Payment
    invoice: Invoice
    client_secret: str | None = strawberry.field(
        description="The PaymentIntent client secret for the app's card sheet; null once "
        "the payment is no longer in flight."
    )


@strawberry.type
class CardSetupPayload:
    account: Account
    client_secret: str = strawberry.field(
        description="The SetupIntent client secret; once the card is saved, Stripe's "
        "webhook makes it the account's default method (when it has none)."
    )


@strawberry.type(description="A card saved at Stripe for an account.")
class SavedCard:
    id: strawberry.ID = strawberry.field(
        description="Stripe's id of the card (a PaymentMethod), as setDefaultPaymentMethod "
        "and detachPaymentMethod take it."
    )
    brand: str = strawberry.field(description="visa, mastercard, amex, …")
    last4: str
    exp_month: int | None
    exp_year: int | None
    is_default: bool = strawberry.field(description="The card auto-pay and pay links charge.")
