"""Refunds (rules §7). A refund always draws on credit, so the refunded invoice stays
PAID and the books balance:

* ``refund_payment`` issues a credit note for the amount ("Refund of payment …",
  origin REFUND) and refunds it through the gateway onto that card payment;
* ``refund_credit`` refunds a credit note's available credit onto the account's most
  recent refundable card payments, split across several when one is not enough;
* ``record_refund`` records an offline refund (cash, bank transfer) as SUCCEEDED.

The amount is taken from the credit note (``credit_refunded``) and the payment
(``refunded_amount``) in the first transaction, under the account lock, so concurrent
refunds can never exceed either; the gateway call comes after the commit (idempotency
key ``deskbill-refund-<id>``); ``apply_refund_state`` records what the gateway says.
A refund that fails or is canceled gives its amount back to both.

Functions that call the gateway take a ``sessionmaker`` and own their transactions;
the others take a session and never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    CreditNoteStatus,
    DocumentType,
    Invoice,
    InvoiceStatus,
    Organization,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Refund,
    RefundMethod,
    RefundStatus,
)
from services import events, money
from services.errors import (
    GatewayError,
    GatewayUnavailableError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from services.events import EventType
from services.gateway import OFF_MESSAGE, GatewayOutcomeUnknownError, PaymentGateway, RefundState
from services.idempotency import run_idempotent
from services.invoice_status import settle
from services.locks import lock_account, lock_invoices

Sessionmaker = async_sessionmaker[AsyncSession]

REFUND_ORIGIN = "REFUND"
RECONCILE_AFTER = timedelta(minutes=1)
OFFLINE_REFUND_METHODS = (RefundMethod.CASH, RefundMethod.BANK_TRANSFER, RefundMethod.OTHER)

# PENDING → SUCCEEDED → FAILED/CANCELED: Stripe can fail a refund after it succeeded,
# never the other way round, so later news only ever moves a refund up this ladder.
_RANK = {
    RefundStatus.PENDING: 0,
    RefundStatus.SUCCEEDED: 1,
    RefundStatus.FAILED: 2,
    RefundStatus.CANCELED: 2,
}
_FROM_GATEWAY = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.CANCELED,
}


def refund_idempotency_key(refund_id: int) -> str:
    return f"deskbill-refund-{refund_id}"


def _label(invoice: Invoice) -> str:
    return invoice.number or f"invoice {invoice.id}"


def _fmt(amount: int, currency: str) -> str:
    return money.format_amount(amount, currency)


def _positive(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValidationError("The refund amount must be greater than zero.")


async def _payment(session: AsyncSession, org_id: int, payment_id: int) -> Payment:
    payment = await session.scalar(
        select(Payment)
        .where(Payment.id == payment_id, Payment.organization_id == org_id)
        .execution_options(populate_existing=True)
    )
    if payment is None:
        raise NotFoundError(f"No payment {payment_id} in this organization.")
    return payment


def _unrefunded(payment: Payment) -> int:
    return payment.amount - payment.refunded_amount


def _require_refundable(payment: Payment, amount: int) -> None:
    if payment.status != PaymentStatus.SUCCEEDED:
        raise InvalidStateError(
            f"Payment #{payment.id} is {payment.status}; only a succeeded payment is refunded.",
            payment_id=payment.id,
        )
    if amount > _unrefunded(payment):
        raise ValidationError(
            f"Payment #{payment.id} has {_fmt(_unrefunded(payment), payment.currency)} left "
            f"to refund; {_fmt(amount, payment.currency)} is more than that.",
            payment_id=payment.id,
            refundable=_unrefunded(payment),
        )


def _draw(
    session: AsyncSession, org: Organization, note: Invoice, amount: int, now: datetime
) -> None:
    """Take ``amount`` of a locked credit note's credit for a refund."""
    if amount > note.credit_remaining:
        raise ValidationError(
            f"Credit note {_label(note)} has {_fmt(note.credit_remaining, note.currency)} of "
            f"credit available; {_fmt(amount, note.currency)} is more than that.",
            credit_note_id=note.id,
            available=note.credit_remaining,
        )
    note.credit_refunded += amount
    note.updated_at = now
    settle(session, note, org, now)


def _new_refund(
    session: AsyncSession,
    org: Organization,
    note: Invoice,
    payment: Payment | None,
    amount: int,
    method: RefundMethod,
    status: RefundStatus,
    reason: str | None,
    now: datetime,
    actor_user_id: int | None,
) -> Refund:
    refund = Refund(
        organization_id=org.id,
        account_id=note.account_id,
        credit_note_id=note.id,
        payment_id=payment.id if payment else None,
        amount=amount,
        currency=note.currency,
        status=status,
        method=method,
        reason=(reason or "").strip() or None,
        created_by_user_id=actor_user_id,
        created_at=now,
        updated_at=now,
    )
    session.add(refund)
    if payment is not None:
        payment.refunded_amount += amount
        payment.updated_at = now
    return refund


def _record_created(session: AsyncSession, refund: Refund, now: datetime) -> None:
    events.record(
        session,
        organization_id=refund.organization_id,
        type=EventType.REFUND_CREATED,
        at=now,
        account_id=refund.account_id,
        invoice_id=refund.credit_note_id,
        credit_note_id=refund.credit_note_id,
        payment_id=refund.payment_id,
        refund_id=refund.id,
        actor_user_id=refund.created_by_user_id,
        amount=refund.amount,
        status=str(refund.status),
        method=str(refund.method),
    )


async def _issue_refund_credit_note(
    session: AsyncSession,
    org: Organization,
    account: Account,
    payment: Payment,
    amount: int,
    now: datetime,
    actor_user_id: int | None,
) -> Invoice:
    # Imported here so refunds do not need the credit module at import time.
    from services.credit import issue_credit_note

    invoice = await session.get(Invoice, payment.invoice_id)
    assert invoice is not None
    return await issue_credit_note(
        session,
        org,
        account,
        amount,
        f"Refund of payment #{payment.id} on {_label(invoice)}",
        now,
        origin=REFUND_ORIGIN,
        source_invoice_id=payment.invoice_id,
        source_payment_id=payment.id,
        actor_user_id=actor_user_id,
    )


async def _returned_credit_of(session: AsyncSession, payment: Payment) -> list[Invoice]:
    """REFUND credit notes of this payment still holding credit: what its failed refunds
    gave back. That credit is this payment's refund already owed to the member, so a
    new refund of the payment draws on it before any new credit is issued."""
    notes = await session.scalars(
        select(Invoice)
        .where(
            Invoice.account_id == payment.account_id,
            Invoice.document_type == DocumentType.CREDIT_NOTE,
            Invoice.origin == REFUND_ORIGIN,
            Invoice.source_payment_id == payment.id,
            Invoice.credit_note_status == CreditNoteStatus.AVAILABLE,
        )
        .order_by(Invoice.id)
    )
    return list(notes)


async def _open_payment_refund(
    session: AsyncSession,
    org_id: int,
    payment_id: int,
    amount: int,
    method: RefundMethod,
    status: RefundStatus,
    reason: str | None,
    now: datetime,
    actor_user_id: int | None,
) -> Refund:
    org = await session.get(Organization, org_id)
    assert org is not None
    found = await _payment(session, org_id, payment_id)
    account = await lock_account(session, org_id, found.account_id)
    payment = await _payment(session, org_id, payment_id)
    _require_refundable(payment, amount)

    returned = await _returned_credit_of(session, payment)
    locked = await lock_invoices(session, [n.id for n in returned])
    note = next((n for n in locked if n.credit_remaining >= amount), None)
    if note is None:
        held = sum(n.credit_remaining for n in locked)
        if amount > _unrefunded(payment) - held:
            raise ValidationError(
                f"{_fmt(held, payment.currency)} of payment #{payment.id}'s earlier refunds "
                "came back as credit; refund that credit note's credit first, or refund at "
                f"most {_fmt(_unrefunded(payment) - held, payment.currency)} here.",
                payment_id=payment.id,
                credit_note_ids=[n.id for n in locked],
            )
        note = await _issue_refund_credit_note(
            session, org, account, payment, amount, now, actor_user_id
        )
    _draw(session, org, note, amount, now)
    refund = _new_refund(
        session, org, note, payment, amount, method, status, reason, now, actor_user_id
    )
    await session.flush()
    _record_created(session, refund, now)
    return refund


# --------------------------------------------------------------------------- through the gateway


async def refund_payment(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    payment_id: int,
    amount: int,
    now: datetime,
    *,
    reason: str | None = None,
    actor_user_id: int | None = None,
    idempotency_key: str | None = None,
) -> Refund:
    """Refund part or all of a succeeded card payment (rules §7.1): a credit note for
    the amount is issued and consumed by a gateway refund on that payment. The refund
    is PENDING until the gateway (or its webhook) says otherwise. Owns its
    transactions (takes a sessionmaker)."""
    _positive(amount)
    if not gateway.enabled:
        raise GatewayUnavailableError(OFF_MESSAGE)
    async with sessionmaker() as session:
        payment = await _payment(session, org.id, payment_id)
    if payment.method != PaymentMethod.CARD or not payment.gateway_payment_intent_id:
        raise InvalidStateError(
            f"Payment #{payment.id} was paid by {payment.method}, not through the gateway; "
            "record an offline refund instead.",
            payment_id=payment.id,
        )

    async def open_refund(session: AsyncSession) -> dict[str, Any]:
        refund = await _open_payment_refund(
            session,
            org.id,
            payment_id,
            amount,
            RefundMethod.CARD,
            RefundStatus.PENDING,
            reason,
            now,
            actor_user_id,
        )
        return {"refund_ids": [refund.id]}

    opened = await _open(
        sessionmaker,
        org.id,
        idempotency_key,
        "refundPayment",
        {"payment_id": payment_id, "amount": amount, "reason": reason},
        open_refund,
        now,
    )
    (refund,) = [
        await drive_refund(sessionmaker, gateway, org.id, refund_id, now)
        for refund_id in opened["refund_ids"]
    ]
    return refund


async def refund_credit(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    credit_note_id: int,
    amount: int,
    now: datetime,
    *,
    reason: str | None = None,
    actor_user_id: int | None = None,
    idempotency_key: str | None = None,
) -> list[Refund]:
    """Refund ``amount`` of a credit note's available credit onto the account's most
    recent refundable card payments (rules §7.1), one refund per payment drawn on.
    Owns its transactions (takes a sessionmaker)."""
    _positive(amount)
    if not gateway.enabled:
        raise GatewayUnavailableError(OFF_MESSAGE)

    async def open_refunds(session: AsyncSession) -> dict[str, Any]:
        org_row = await session.get(Organization, org.id)
        assert org_row is not None
        note = await _credit_note(session, org.id, credit_note_id)
        payments = list(
            await session.scalars(
                select(Payment)
                .where(
                    Payment.account_id == note.account_id,
                    Payment.method == PaymentMethod.CARD,
                    Payment.status == PaymentStatus.SUCCEEDED,
                    Payment.gateway_payment_intent_id.is_not(None),
                    Payment.refunded_amount < Payment.amount,
                )
                .order_by(Payment.succeeded_at.desc(), Payment.id.desc())
                .execution_options(populate_existing=True)
            )
        )
        refundable = sum(_unrefunded(p) for p in payments)
        if amount > refundable:
            raise ValidationError(
                f"The account's card payments can take back at most "
                f"{_fmt(refundable, note.currency)}; refund the rest offline.",
                refundable=refundable,
            )
        _draw(session, org_row, note, amount, now)
        refunds, left = [], amount
        for payment in payments:
            part = min(left, _unrefunded(payment))
            refunds.append(
                _new_refund(
                    session,
                    org_row,
                    note,
                    payment,
                    part,
                    RefundMethod.CARD,
                    RefundStatus.PENDING,
                    reason,
                    now,
                    actor_user_id,
                )
            )
            left -= part
            if left == 0:
                break
        await session.flush()
        for refund in refunds:
            _record_created(session, refund, now)
        return {"refund_ids": [r.id for r in refunds]}

    opened = await _open(
        sessionmaker,
        org.id,
        idempotency_key,
        "refundCredit",
        {"credit_note_id": credit_note_id, "amount": amount, "reason": reason},
        open_refunds,
        now,
    )
    return [
        await drive_refund(sessionmaker, gateway, org.id, refund_id, now)
        for refund_id in opened["refund_ids"]
    ]


async def _credit_note(session: AsyncSession, org_id: int, credit_note_id: int) -> Invoice:
    found = await session.scalar(
        select(Invoice).where(Invoice.id == credit_note_id, Invoice.organization_id == org_id)
    )
    if found is None or found.document_type != DocumentType.CREDIT_NOTE:
        raise NotFoundError(f"No credit note {credit_note_id} in this organization.")
    await lock_account(session, org_id, found.account_id)
    (note,) = await lock_invoices(session, [found.id])
    if note.status == InvoiceStatus.VOID:
        raise InvalidStateError(f"Credit note {_label(note)} is void.", credit_note_id=note.id)
    return note


async def _open(
    sessionmaker: Sessionmaker,
    org_id: int,
    idempotency_key: str | None,
    operation: str,
    request: dict[str, Any],
    work: Any,
    now: datetime,
) -> dict[str, Any]:
    if idempotency_key:
        return await run_idempotent(
            sessionmaker, org_id, idempotency_key, operation, request, work, now=now
        )
    async with sessionmaker() as session, session.begin():
        result: dict[str, Any] = await work(session)
        return result


async def drive_refund(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org_id: int,
    refund_id: int,
    now: datetime,
) -> Refund:
    """Ask the gateway to execute (or tell the state of) a PENDING card refund and
    record the answer; safe to call again. An unanswered call leaves it PENDING for
    ``reconcile_refunds``; a refusal fails it, which gives its credit back."""
    async with sessionmaker() as session:
        refund = await session.get(Refund, refund_id)
        if refund is None or refund.organization_id != org_id:
            raise NotFoundError(f"No refund {refund_id} in this organization.")
        payment = await session.get(Payment, refund.payment_id) if refund.payment_id else None
    if refund.status != RefundStatus.PENDING or refund.method != RefundMethod.CARD:
        return refund
    assert payment is not None and payment.gateway_payment_intent_id
    state: RefundState | None = None
    refusal: GatewayError | None = None
    try:
        if refund.gateway_refund_id:
            state = await gateway.retrieve_refund(refund.gateway_refund_id)
        else:
            state = await gateway.create_refund(
                payment_intent=payment.gateway_payment_intent_id,
                amount=refund.amount,
                idempotency_key=refund_idempotency_key(refund.id),
                metadata={
                    "deskbill_refund_id": str(refund.id),
                    "deskbill_payment_id": str(payment.id),
                    "deskbill_credit_note_id": str(refund.credit_note_id),
                    "deskbill_organization_id": str(org_id),
                },
            )
    except GatewayOutcomeUnknownError:
        return refund
    except GatewayError as exc:
        refusal = exc
    async with sessionmaker() as session, session.begin():
        org = await session.get(Organization, org_id)
        assert org is not None
        if state is None:
            assert refusal is not None
            state = RefundState(
                id="",
                status="failed",
                amount=refund.amount,
                failure_reason=refusal.extensions.get("gateway_code") or "refused",
            )
            return await apply_refund_state(
                session, org, refund_id, state, now, message=refusal.message
            )
        return await apply_refund_state(session, org, refund_id, state, now)


async def apply_refund_state(
    session: AsyncSession,
    org: Organization,
    refund: Refund | int,
    state: RefundState,
    now: datetime,
    *,
    message: str | None = None,
) -> Refund:
    """Move a refund to what the gateway's refund object says — forward only — and
    give the credit back when it failed or was canceled. Does not commit."""
    refund_id = refund if isinstance(refund, int) else refund.id
    found = await session.get(Refund, refund_id)
    if found is None or found.organization_id != org.id:
        raise NotFoundError(f"No refund {refund_id} in this organization.")
    await lock_account(session, org.id, found.account_id)
    (note,) = await lock_invoices(session, [found.credit_note_id])
    current = await session.scalar(
        select(Refund).where(Refund.id == refund_id).execution_options(populate_existing=True)
    )
    assert current is not None
    if state.id:
        if current.gateway_refund_id and current.gateway_refund_id != state.id:
            return current
        current.gateway_refund_id = state.id
    target = _FROM_GATEWAY.get(state.status, RefundStatus.PENDING)
    before = RefundStatus(current.status)
    if _RANK[target] <= _RANK[before]:
        return current
    current.status = target
    current.updated_at = now
    if target in (RefundStatus.FAILED, RefundStatus.CANCELED):
        current.error_code = state.failure_reason or str(target).lower()
        current.error_message = message or _failure_sentence(state.failure_reason)
        _give_back(session, org, note, current, now)
        if current.payment_id is not None:
            payment = await _payment(session, org.id, current.payment_id)
            payment.refunded_amount -= current.amount
            payment.updated_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.REFUND_STATUS_CHANGED,
        at=now,
        account_id=current.account_id,
        invoice_id=current.credit_note_id,
        credit_note_id=current.credit_note_id,
        payment_id=current.payment_id,
        refund_id=current.id,
        status=str(target),
        previous_status=str(before),
        error_code=current.error_code,
    )
    await session.flush()
    return current


def _give_back(
    session: AsyncSession, org: Organization, note: Invoice, refund: Refund, now: datetime
) -> None:
    note.credit_refunded -= refund.amount
    note.updated_at = now
    settle(session, note, org, now)


def _failure_sentence(reason: str | None) -> str:
    if not reason:
        return "The gateway could not complete the refund; its credit is available again."
    return (
        f"The gateway could not complete the refund ({reason.replace('_', ' ')}); "
        "its credit is available again."
    )


async def reconcile_refunds(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    now: datetime,
    *,
    older_than: timedelta = RECONCILE_AFTER,
) -> list[Refund]:
    """Card refunds still PENDING without a gateway id (the call never answered) are
    asked about again with the same key."""
    if not gateway.enabled:
        return []
    async with sessionmaker() as session:
        ids = list(
            await session.scalars(
                select(Refund.id)
                .where(
                    Refund.organization_id == org.id,
                    Refund.method == RefundMethod.CARD,
                    Refund.status == RefundStatus.PENDING,
                    Refund.gateway_refund_id.is_(None),
                    Refund.created_at <= now - older_than,
                )
                .order_by(Refund.id)
            )
        )
    return [await drive_refund(sessionmaker, gateway, org.id, rid, now) for rid in ids]


# --------------------------------------------------------------------------- offline


async def record_refund(
    session: AsyncSession,
    org: Organization,
    amount: int,
    method: RefundMethod | str,
    now: datetime,
    *,
    payment_id: int | None = None,
    credit_note_id: int | None = None,
    reason: str | None = None,
    actor_user_id: int | None = None,
) -> Refund:
    """Record an offline refund (rules §7.3: cash back, bank transfer), SUCCEEDED at
    once — it is recorded, not executed. Give exactly one of ``payment_id`` (a credit
    note "Refund of payment …" is issued and consumed, as for a card refund) or
    ``credit_note_id`` (its available credit is paid out). Does not commit."""
    _positive(amount)
    try:
        method = RefundMethod(method)
    except ValueError:
        raise ValidationError(f"Unknown refund method {method!r}.") from None
    if method not in OFFLINE_REFUND_METHODS:
        raise ValidationError(
            "Card refunds go through the gateway; record only cash, bank transfer or other."
        )
    if (payment_id is None) == (credit_note_id is None):
        raise ValidationError("Give either the payment or the credit note to refund.")
    if payment_id is not None:
        refund = await _open_payment_refund(
            session,
            org.id,
            payment_id,
            amount,
            method,
            RefundStatus.SUCCEEDED,
            reason,
            now,
            actor_user_id,
        )
        await session.flush()
        return refund
    assert credit_note_id is not None
    note = await _credit_note(session, org.id, credit_note_id)
    _draw(session, org, note, amount, now)
    refund = _new_refund(
        session,
        org,
        note,
        None,
        amount,
        method,
        RefundStatus.SUCCEEDED,
        reason,
        now,
        actor_user_id,
    )
    await session.flush()
    _record_created(session, refund, now)
    return refund
