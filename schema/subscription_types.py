"""What the subscriptions send: one message per event of the log, carrying its
``cursor`` (pass it back as ``after`` to resume exactly after it) and the objects the
event speaks of, as they are when the message is sent.

The status fields come from the event itself, so a replay tells the story as it
happened; the ``invoice`` and ``payment`` fields are read through the DataLoaders only
when a client selects them, so a subscriber that wants the event alone costs the
server no query per message.
"""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from schema.enums import InvoiceStatus, PaymentStatus, RefundStatus
from schema.types import Event, Invoice, Payment, _loaders


@strawberry.type(
    description="An invoice's status moved (finalized, due, overdue, paid, voided, "
    "un-voided): the event with its cursor, and the invoice as it is now."
)
class InvoiceStatusEvent:
    cursor: str = strawberry.field(description="Resume after this message with `after`.")
    type: str = strawberry.field(description="The event type, e.g. `invoice.paid`.")
    status: InvoiceStatus | None = strawberry.field(
        description="The status this event moved the invoice to, when the event states it."
    )
    previous_status: InvoiceStatus | None
    event: Event
    invoice_pk: strawberry.Private[int | None]

    @strawberry.field(description="The invoice as it is when this message is sent.")
    async def invoice(self, info: Info) -> Invoice | None:
        if self.invoice_pk is None:
            return None
        invoice: Invoice | None = await _loaders(info).invoice.load(self.invoice_pk)
        return invoice


@strawberry.type(
    description="A payment was made or moved (pending, succeeded, failed, canceled), or a "
    "refund of one did: the event with its cursor, and the payment and invoice as they "
    "are now."
)
class PaymentStatusEvent:
    cursor: str = strawberry.field(description="Resume after this message with `after`.")
    type: str = strawberry.field(description="The event type, e.g. `payment.status_changed`.")
    status: PaymentStatus | None = strawberry.field(
        description="For payment events: the payment's status after this event."
    )
    previous_status: PaymentStatus | None
    refund_status: RefundStatus | None = strawberry.field(
        description="For refund events: the refund's status after this event."
    )
    event: Event
    payment_pk: strawberry.Private[int | None]
    invoice_pk: strawberry.Private[int | None]

    @strawberry.field(description="The payment as it is when this message is sent.")
    async def payment(self, info: Info) -> Payment | None:
        if self.payment_pk is None:
            return None
        payment: Payment | None = await _loaders(info).payment.load(self.payment_pk)
        return payment

    @strawberry.field(
        description="The invoice paid (for a refund: the credit note it was drawn on), now."
    )
    async def invoice(self, info: Info) -> Invoice | None:
        if self.invoice_pk is None:
            return None
        invoice: Invoice | None = await _loaders(info).invoice.load(self.invoice_pk)
        return invoice
