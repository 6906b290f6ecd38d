"""Mutations that move money (rules §6, §7): offline payments and refunds, member
pay-now and admin charge-now through the gateway, saving a card, card refunds.

Two kinds of service sit underneath. Offline ones take a session, so they run in
one transaction through ``idempotent`` (same key and input → the stored result).
Gateway ones take the sessionmaker and an ``idempotency_key`` themselves: they keep
the key's record in their own first transaction (the row that names the payment or
refunds), never hold a transaction across a gateway call, and on a retry drive the
same row again — so a replay answers with the same payment or refunds, in their
current state, and a different input under the same key is a CONFLICT.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import strawberry
from sqlalchemy import select
from strawberry.types import Info

from models import Organization, Refund
from resolvers import mapping
from resolvers.mutations.common import JSON, Work, account_pk, amount, idempotent, reading
from resolvers.permissions import (
    context,
    ensure_account_visible,
    pk_of,
    require_admin,
    require_writer,
)
from schema import payment_inputs as p
from schema import types as t
from services import cards, payments, refunds
from services.gateway import OffGateway, PaymentGateway, gateway_for

# set_default_card and detach_card: (sessionmaker, gateway, org, account, card, now, actor)
CardChange = Callable[..., Awaitable[object]]


def gateway_of(info: Info, org: Organization) -> PaymentGateway:
    """The gateway ``org`` may use (a sandbox refuses a live Stripe key, SANDBOX_LIVE_KEY).
    The lifespan sets it; a context without one (no lifespan) has card payments off."""
    gateway: PaymentGateway | None = context(info).services.get("gateway")
    return gateway_for(gateway if gateway is not None else OffGateway(), org)


async def _card_change(
    info: Info, account_id: strawberry.ID, payment_method: str, change: CardChange
) -> t.Account:
    """Load the organization, call the saved-card service (it talks to the gateway
    outside any transaction, then changes the default in one), answer the account."""
    who = require_writer(info)
    pk = account_pk(who, account_id)
    async with reading(info) as w:
        org, now = w.org, w.now
    try:
        await change(
            context(info).sessionmaker, gateway_of(info, org), org, pk, payment_method, now,
            actor_user_id=who.user_id,
        )  # fmt: skip
    finally:
        await _after_gateway_work(info, who.organization_id)
    context(info).reset_loaders()
    account = await context(info).loaders.account.load(pk)
    assert account is not None
    return account


async def _after_gateway_work(info: Info, organization_id: int) -> None:
    """Gateway services commit in transactions of their own: wake subscribers, and
    make later reads in this request see the new rows."""
    ctx = context(info)
    await ctx.announce_latest(organization_id)
    ctx.reset_loaders()


async def _payment(info: Info, pk: int) -> t.Payment:
    payment = await context(info).loaders.payment.load(pk)
    assert payment is not None, "a payment just written is visible to its writer"
    return payment


async def _refunds(info: Info, pks: list[int]) -> list[t.Refund]:
    """Refunds by id, in the order given (read fresh: there is no refund loader)."""
    async with context(info).read_sessionmaker() as session:
        rows = {r.id: r for r in await session.scalars(select(Refund).where(Refund.id.in_(pks)))}
    return [mapping.refund(rows[pk]) for pk in pks]


@strawberry.type
class PaymentMutations:
    @strawberry.mutation(
        description="Record an offline payment (cash, cheque, bank transfer, other) on an "
        "UPCOMING/DUE/OVERDUE invoice; partial is allowed, the excess becomes credit."
    )
    async def record_payment(
        self, info: Info, input: p.RecordPaymentInput, idempotency_key: str | None = None
    ) -> t.Payment:
        who = require_admin(info)
        invoice_id = pk_of(input.invoice_id, "Invoice", field="invoiceId")
        minor = amount(input.amount, who, "amount")
        request = {
            "invoice_id": invoice_id,
            "amount": minor,
            "method": input.method.value,
            "received_on": input.received_on.isoformat() if input.received_on else None,
            "note": input.note,
        }

        async def work(w: Work) -> JSON:
            payment = await payments.record_payment(
                w.session, w.org, invoice_id, minor, input.method.value, w.now,
                received_on=input.received_on, note=input.note, actor_user_id=w.actor,
            )  # fmt: skip
            return {"payment_id": payment.id}

        done = await idempotent(info, idempotency_key, "recordPayment", request, work)
        return await _payment(info, int(done["payment_id"]))

    @strawberry.mutation(
        description="Pay an invoice by card (members: their own accounts). Returns the "
        "PaymentIntent client secret for the card sheet; the invoice is PROCESSING until "
        "Stripe's webhook settles it."
    )
    async def pay_invoice(
        self, info: Info, invoice_id: strawberry.ID, idempotency_key: str | None = None
    ) -> p.PayInvoicePayload:
        who = require_writer(info)
        ctx = context(info)
        pk = pk_of(invoice_id, "Invoice", field="invoiceId")
        async with reading(info) as w:
            invoice = await w.invoice(pk)
        ensure_account_visible(who, invoice.account_id)
        org, now = w.org, w.now
        try:
            started = await payments.start_card_payment(
                ctx.sessionmaker, gateway_of(info, org), org, pk, now,
                actor_user_id=who.user_id, idempotency_key=idempotency_key,
            )  # fmt: skip
        finally:
            await _after_gateway_work(info, who.organization_id)
        payment = await _payment(info, started.payment.id)
        paid = await ctx.loaders.invoice.load(pk)
        assert paid is not None
        return p.PayInvoicePayload(
            payment=payment, invoice=paid, client_secret=started.client_secret
        )

    @strawberry.mutation(
        description="Charge a DUE/OVERDUE invoice to the account's saved card now. A "
        "decline is not an error: the payment comes back FAILED with the card's reason."
    )
    async def charge_invoice(
        self, info: Info, invoice_id: strawberry.ID, idempotency_key: str | None = None
    ) -> t.Payment:
        who = require_admin(info)
        ctx = context(info)
        pk = pk_of(invoice_id, "Invoice", field="invoiceId")
        async with reading(info) as w:
            org, now = w.org, w.now
        try:
            payment = await payments.charge_now(
                ctx.sessionmaker, gateway_of(info, org), org, pk, now,
                actor_user_id=who.user_id, idempotency_key=idempotency_key,
            )  # fmt: skip
        finally:
            await _after_gateway_work(info, who.organization_id)
        return await _payment(info, payment.id)

    @strawberry.mutation(
        description="Start saving a card for auto-pay (members: their own accounts): a "
        "SetupIntent client secret for the card sheet. The same idempotencyKey returns "
        "the same SetupIntent."
    )
    async def start_card_setup(
        self, info: Info, account_id: strawberry.ID, idempotency_key: str | None = None
    ) -> p.CardSetupPayload:
        who = require_writer(info)
        pk = account_pk(who, account_id)
        async with reading(info) as w:
            org = w.org
        # Without a key every call is a new SetupIntent, as a fresh card sheet expects.
        secret = await payments.start_card_setup(
            context(info).sessionmaker, gateway_of(info, org), org, pk,
            request_key=idempotency_key or uuid.uuid4().hex,
        )  # fmt: skip
        context(info).reset_loaders()
        account = await context(info).loaders.account.load(pk)
        assert account is not None
        return p.CardSetupPayload(account=account, client_secret=secret)

    @strawberry.mutation(
        description="Make one of an account's saved cards the one auto-pay and pay links "
        "charge (members: their own accounts). The card must be saved for the account."
    )
    async def set_default_payment_method(
        self, info: Info, account_id: strawberry.ID, payment_method_id: strawberry.ID
    ) -> t.Account:
        return await _card_change(info, account_id, str(payment_method_id), cards.set_default_card)

    @strawberry.mutation(
        description="Remove a saved card from an account at Stripe (members: their own "
        "accounts); when it was the default, the account has none until another is chosen "
        "or saved."
    )
    async def detach_payment_method(
        self, info: Info, account_id: strawberry.ID, payment_method_id: strawberry.ID
    ) -> t.Account:
        return await _card_change(info, account_id, str(payment_method_id), cards.detach_card)

    @strawberry.mutation(
        description="Refund part or all of a card payment: a credit note for the amount "
        "is issued and refunded through Stripe, so the invoice stays PAID."
    )
    async def refund_payment(
        self, info: Info, input: p.RefundPaymentInput, idempotency_key: str | None = None
    ) -> t.Refund:
        who = require_admin(info)
        ctx = context(info)
        payment_id = pk_of(input.payment_id, "Payment", field="paymentId")
        minor = amount(input.amount, who, "amount")
        async with reading(info) as w:
            org, now = w.org, w.now
        try:
            refund = await refunds.refund_payment(
                ctx.sessionmaker, gateway_of(info, org), org, payment_id, minor, now,
                reason=input.reason, actor_user_id=who.user_id, idempotency_key=idempotency_key,
            )  # fmt: skip
        finally:
            await _after_gateway_work(info, who.organization_id)
        (mapped,) = await _refunds(info, [refund.id])
        return mapped

    @strawberry.mutation(
        description="Refund a credit note's available credit onto the account's most recent "
        "card payments through Stripe (one refund per payment drawn on)."
    )
    async def refund_credit(
        self, info: Info, input: p.RefundCreditInput, idempotency_key: str | None = None
    ) -> list[t.Refund]:
        who = require_admin(info)
        ctx = context(info)
        note_id = pk_of(input.credit_note_id, "CreditNote", "Invoice", field="creditNoteId")
        minor = amount(input.amount, who, "amount")
        async with reading(info) as w:
            org, now = w.org, w.now
        try:
            done = await refunds.refund_credit(
                ctx.sessionmaker, gateway_of(info, org), org, note_id, minor, now,
                reason=input.reason, actor_user_id=who.user_id, idempotency_key=idempotency_key,
            )  # fmt: skip
        finally:
            await _after_gateway_work(info, who.organization_id)
        return await _refunds(info, [refund.id for refund in done])

    @strawberry.mutation(
        description="Record a refund paid outside the gateway (cash back, bank transfer); "
        "it draws on credit like a card refund and is SUCCEEDED at once."
    )
    async def record_refund(
        self, info: Info, input: p.RecordRefundInput, idempotency_key: str | None = None
    ) -> t.Refund:
        who = require_admin(info)
        minor = amount(input.amount, who, "amount")
        payment_id = (
            None
            if input.payment_id is None
            else pk_of(input.payment_id, "Payment", field="paymentId")
        )
        note_id = (
            None
            if input.credit_note_id is None
            else pk_of(input.credit_note_id, "CreditNote", "Invoice", field="creditNoteId")
        )
        request = {
            "amount": minor,
            "method": input.method.value,
            "payment_id": payment_id,
            "credit_note_id": note_id,
            "reason": input.reason,
        }

        async def work(w: Work) -> JSON:
            refund = await refunds.record_refund(
                w.session, w.org, minor, input.method.value, w.now,
                payment_id=payment_id, credit_note_id=note_id, reason=input.reason,
                actor_user_id=w.actor,
            )  # fmt: skip
            return {"refund_id": refund.id}

        done = await idempotent(info, idempotency_key, "recordRefund", request, work)
        (mapped,) = await _refunds(info, [int(done["refund_id"])])
        return mapped
