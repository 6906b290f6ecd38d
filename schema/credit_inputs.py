"""Payloads of the credit mutations (rules §5.6): what an admin sees after applying,
moving, removing or adding credit. Arguments are plain (ids, decimal strings), so
only the results that carry more than one object need a type of their own."""

from __future__ import annotations

import strawberry

from schema.types import CreditAllocation, CreditNote, Invoice, LineItem


@strawberry.type(description="A credit line moved off a pending invoice (rules §5.6).")
class MoveCreditLinePayload:
    credit_note: CreditNote = strawberry.field(
        description="The new one-line credit note the line became."
    )
    allocation: CreditAllocation = strawberry.field(
        description="Its credit applied to the target invoice (up to that invoice's balance)."
    )
    invoice: Invoice = strawberry.field(description="The target invoice, after the credit.")
    source_invoice: Invoice = strawberry.field(
        description="The pending invoice the line left, with its totals recomputed."
    )


@strawberry.type(description="A custom credit line, placed per the additional-charges policy.")
class AddCreditPayload:
    line: LineItem
    invoice: Invoice = strawberry.field(
        description="The document the line is on: a pending invoice, or — under "
        "NEW_INVOICE_DUE_TODAY once finalized — the invoice that became a credit note."
    )
    credit_note: CreditNote | None = strawberry.field(
        description="Set when that document was finalized into a credit note."
    )


@strawberry.type(description="The account's available credit applied to one invoice.")
class ApplyCreditPayload:
    invoice: Invoice
    allocations: list[CreditAllocation] = strawberry.field(
        description="The allocations made now, oldest credit note first (empty when the "
        "account had no credit or the invoice was already paid)."
    )
