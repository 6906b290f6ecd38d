"""Payments into invoices (rules §6): offline payments, card payments through the
gateway (member pay-now, admin charge-now, auto-pay), and the one function that moves
a card payment along from the gateway's PaymentIntent.

Card payments never hold a database transaction across a gateway call:

1. transaction 1 locks the account and the invoice, writes a ``PENDING`` payment row
   and moves the invoice to ``PROCESSING`` (remembering ``status_before_processing``);
   the row's id is the gateway idempotency key ``deskbill-payment-<id>``;
2. the gateway is called (retried with that same key, so never charged twice);
3. transaction 2 records the outcome through ``apply_payment_intent_state``.

When the gateway does not answer at all the row stays ``PENDING``;
``reconcile_payments`` later asks again with the same key, and
``abandon_stale_payments`` cancels what is still in flight after 30 minutes.

Functions that call the gateway take a ``sessionmaker`` and own their transactions;
the others take a session and never commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    DocumentType,
    Invoice,
    InvoiceStatus,
    Organization,
    Payment,
    PaymentMethod,
    PaymentStatus,
    PaymentType,
)
from models.enums import OUTSTANDING_STATUSES
from services import events, money
from services.clock import local_date
from services.errors import (
    GatewayError,
    GatewayUnavailableError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from services.events import EventType
from services.gateway import (
    OFF_MESSAGE,
    CardDeclinedError,
    GatewayOutcomeUnknownError,
    IntentState,
    PaymentGateway,
    SandboxLiveKeyError,
    gateway_for,
)
from services.idempotency import run_idempotent
from services.invoice_status import mark_milestones, set_status, settle, unpaid_status_now
from services.locks import lock_account, lock_invoice
from services.refunds import reconcile_refunds

Sessionmaker = async_sessionmaker[AsyncSession]
log = logging.getLogger(__name__)

ABANDON_AFTER = timedelta(minutes=30)
# A PENDING row older than this whose gateway call never answered is asked about again.
RECONCILE_AFTER = timedelta(minutes=1)
# rules §6.2: the first auto-pay charge plus one retry.
MAX_AUTOPAY_ATTEMPTS = 2
OVERPAYMENT_ORIGIN = "OVERPAYMENT"

OFFLINE_METHODS = (
    PaymentMethod.CASH,
    PaymentMethod.CHEQUE,
    PaymentMethod.BANK_TRANSFER,
    PaymentMethod.OTHER,
)
IN_FLIGHT = (PaymentStatus.PENDING, PaymentStatus.PROCESSING)
TERMINAL = (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED)

# A payment only moves up this ladder, so late or repeated gateway news cannot undo
# a newer state; FAILED and CANCELED share a rung, SUCCEEDED is the top and final.
_RANK = {
    PaymentStatus.PENDING: 0,
    PaymentStatus.PROCESSING: 1,
    PaymentStatus.FAILED: 2,
    PaymentStatus.CANCELED: 2,
    PaymentStatus.SUCCEEDED: 3,
}


def payment_idempotency_key(payment_id: int) -> str:
    """The gateway idempotency key of a payment attempt: one attempt, one intent."""
    return f"deskbill-payment-{payment_id}"


def intent_metadata(payment: Payment) -> dict[str, str]:
    return {
        "deskbill_payment_id": str(payment.id),
        "deskbill_invoice_id": str(payment.invoice_id),
        "deskbill_account_id": str(payment.account_id),
        "deskbill_organization_id": str(payment.organization_id),
    }


def payment_status_of(intent: IntentState) -> PaymentStatus:
    """Our payment status for a PaymentIntent status."""
    if intent.status == "succeeded":
        return PaymentStatus.SUCCEEDED
    if intent.status == "canceled":
        return PaymentStatus.CANCELED
    if intent.status == "requires_payment_method" and intent.error_code:
        return PaymentStatus.FAILED
    return PaymentStatus.PROCESSING


@dataclass(frozen=True)
class CardPayment:
    """A started card payment: the row, and for pay-now the PaymentIntent client
    secret the member app hands to its card sheet."""

    payment: Payment
    client_secret: str | None = None


def _label(invoice: Invoice) -> str:
    return invoice.number or f"invoice {invoice.id}"


def _fmt(amount: int, currency: str) -> str:
    return money.format_amount(amount, currency)


async def _load_invoice(session: AsyncSession, org_id: int, invoice_id: int) -> Invoice:
    invoice = await session.scalar(
        select(Invoice).where(Invoice.id == invoice_id, Invoice.organization_id == org_id)
    )
    if invoice is None:
        raise NotFoundError(f"No invoice {invoice_id} in this organization.")
    return invoice


async def _lock_invoice_and_account(
    session: AsyncSession, org_id: int, invoice_id: int
) -> tuple[Account, Invoice]:
    found = await _load_invoice(session, org_id, invoice_id)
    account = await lock_account(session, org_id, found.account_id)
    invoice = await lock_invoice(session, org_id, invoice_id)
    return account, invoice


async def _organization(session: AsyncSession, org_id: int) -> Organization:
    org = await session.get(Organization, org_id)
    if org is None:
        raise NotFoundError("No such organization.")
    return org


def _require_payable(invoice: Invoice, statuses: Sequence[InvoiceStatus], what: str) -> None:
    if invoice.document_type != DocumentType.INVOICE:
        raise InvalidStateError(
            f"{_label(invoice)} is a credit note; there is nothing to pay on it.",
            invoice_id=invoice.id,
        )
    if invoice.status not in statuses:
        allowed = "/".join(str(s) for s in statuses)
        raise InvalidStateError(
            f"{_label(invoice)} is {invoice.status}; {what} needs an invoice that is {allowed}.",
            invoice_id=invoice.id,
            status=str(invoice.status),
        )
    if invoice.balance_due <= 0:
        raise InvalidStateError(
            f"{_label(invoice)} has nothing left to pay.", invoice_id=invoice.id
        )


def _record_created(session: AsyncSession, payment: Payment, now: datetime) -> None:
    events.record(
        session,
        organization_id=payment.organization_id,
        type=EventType.PAYMENT_CREATED,
        at=now,
        account_id=payment.account_id,
        invoice_id=payment.invoice_id,
        payment_id=payment.id,
        actor_user_id=payment.created_by_user_id,
        status=str(payment.status),
        amount=payment.amount,
        method=str(payment.method),
        payment_type=str(payment.type),
        attempt=payment.attempt,
    )


# --------------------------------------------------------------------------- offline


async def record_payment(
    session: AsyncSession,
    org: Organization,
    invoice_id: int,
    amount: int,
    method: PaymentMethod | str,
    now: datetime,
    *,
    received_on: date | None = None,
    note: str | None = None,
    actor_user_id: int | None = None,
) -> Payment:
    """Record an offline payment (rules §6.5) on an UPCOMING/DUE/OVERDUE invoice.

    Partial payments keep the invoice's status with a smaller balance; a full one makes
    it PAID. Whatever exceeds the balance becomes a credit note for the account
    (``payment.overpayment_credit_note_id``).
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValidationError("The payment amount must be greater than zero.")
    try:
        method = PaymentMethod(method)
    except ValueError:
        raise ValidationError(f"Unknown payment method {method!r}.") from None
    if method not in OFFLINE_METHODS:
        raise ValidationError(
            "Only offline payments (cash, cheque, bank transfer, other) are recorded; "
            "card payments go through the gateway (pay now / charge now)."
        )
    account, invoice = await _lock_invoice_and_account(session, org.id, invoice_id)
    _require_payable(invoice, OUTSTANDING_STATUSES, "recording a payment")

    applied = min(amount, invoice.balance_due)
    payment = Payment(
        organization_id=org.id,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        amount=amount,
        applied_amount=applied,
        refunded_amount=0,
        currency=invoice.currency,
        status=PaymentStatus.SUCCEEDED,
        type=PaymentType.MANUAL,
        method=method,
        attempt=1,
        note=(note or "").strip() or None,
        received_on=received_on or local_date(now, org.timezone),
        created_by_user_id=actor_user_id,
        created_at=now,
        updated_at=now,
        succeeded_at=now,
    )
    session.add(payment)
    await session.flush()
    _record_created(session, payment, now)
    invoice.amount_paid += applied
    invoice.updated_at = now
    settle(session, invoice, org, now, actor_user_id=actor_user_id)
    if amount > applied:
        await _credit_overpayment(session, org, account, invoice, payment, amount - applied, now)
    await session.flush()
    return payment


async def _credit_overpayment(
    session: AsyncSession,
    org: Organization,
    account: Account,
    invoice: Invoice,
    payment: Payment,
    excess: int,
    now: datetime,
) -> None:
    """rules §5.2: the part of a payment beyond the balance becomes credit."""
    # Imported here so payments do not need the credit module at import time.
    from services.credit import issue_credit_note

    credit_note = await issue_credit_note(
        session,
        org,
        account,
        excess,
        f"Overpayment of payment #{payment.id} on {_label(invoice)}",
        now,
        origin=OVERPAYMENT_ORIGIN,
        source_invoice_id=invoice.id,
        source_payment_id=payment.id,
        actor_user_id=payment.created_by_user_id,
    )
    payment.overpayment_credit_note_id = credit_note.id


# --------------------------------------------------------------------------- the gateway's word


async def apply_payment_intent_state(
    session: AsyncSession,
    org: Organization,
    payment: Payment | int,
    intent: IntentState,
    now: datetime,
    *,
    actor_user_id: int | None = None,
) -> Payment:
    """Move a card payment to what its PaymentIntent says — the only place that does.

    Locks the account, then the invoice, then re-reads the payment. The status only
    moves forward (PENDING → PROCESSING → FAILED/CANCELED → SUCCEEDED), so duplicated,
    reordered or stale news is harmless and SUCCEEDED is never left. On success the
    invoice's ``amount_paid`` grows by what fits its balance (the rest becomes credit)
    and it settles: PAID when paid in full, otherwise back to its unpaid status. On
    failure or cancellation the invoice returns to its unpaid status and a failed
    auto-pay charge schedules its one retry. Does not commit.
    """
    payment_id = payment if isinstance(payment, int) else payment.id
    found = await session.get(Payment, payment_id)
    if found is None or found.organization_id != org.id:
        raise NotFoundError(f"No payment {payment_id} in this organization.")
    account = await lock_account(session, org.id, found.account_id)
    invoice = await lock_invoice(session, org.id, found.invoice_id)
    current = await session.scalar(
        select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
    )
    assert current is not None
    if current.gateway_payment_intent_id and current.gateway_payment_intent_id != intent.id:
        # News about another attempt's intent: not this payment's business.
        return current
    if current.gateway_payment_intent_id is None:
        current.gateway_payment_intent_id = intent.id
        current.updated_at = now
    target = payment_status_of(intent)
    if intent.payment_method and current.gateway_payment_method_id is None:
        current.gateway_payment_method_id = intent.payment_method
    error = (intent.error_code, intent.error_message) if target == PaymentStatus.FAILED else None
    await _move(
        session, org, account, invoice, current, target, now, error=error, actor=actor_user_id
    )
    return current


async def _move(
    session: AsyncSession,
    org: Organization,
    account: Account,
    invoice: Invoice,
    payment: Payment,
    target: PaymentStatus,
    now: datetime,
    *,
    error: tuple[str | None, str | None] | None = None,
    actor: int | None = None,
) -> bool:
    """Move ``payment`` (account and invoice locked) to ``target`` if that is forward."""
    before = PaymentStatus(payment.status)
    if _RANK[target] <= _RANK[before]:
        return False
    payment.status = target
    payment.updated_at = now
    if target == PaymentStatus.SUCCEEDED:
        payment.error_code = payment.error_message = None
        payment.succeeded_at = now
        applied = min(payment.amount, invoice.balance_due)
        payment.applied_amount = applied
        invoice.amount_paid += applied
        invoice.updated_at = now
    elif error is not None:
        payment.error_code, payment.error_message = error
    events.record(
        session,
        organization_id=org.id,
        type=EventType.PAYMENT_STATUS_CHANGED,
        at=now,
        account_id=payment.account_id,
        invoice_id=payment.invoice_id,
        payment_id=payment.id,
        actor_user_id=actor,
        status=str(target),
        previous_status=str(before),
        amount=payment.amount,
        error_code=payment.error_code,
        error_message=payment.error_message,
    )
    if target in TERMINAL:
        await _release_invoice(session, org, invoice, payment, now, actor)
        if target == PaymentStatus.SUCCEEDED and payment.applied_amount < payment.amount:
            excess = payment.amount - payment.applied_amount
            await _credit_overpayment(session, org, account, invoice, payment, excess, now)
        elif target != PaymentStatus.SUCCEEDED and payment.type == PaymentType.AUTOMATIC:
            _schedule_autopay_retry(org, invoice, now)
    await session.flush()
    return True


async def _release_invoice(
    session: AsyncSession,
    org: Organization,
    invoice: Invoice,
    payment: Payment,
    now: datetime,
    actor: int | None,
) -> None:
    """A gateway payment ended: the invoice leaves PROCESSING for PAID (paid in full)
    or the unpaid status its dates give — the status it had before, unless its due
    date passed meanwhile."""
    if invoice.status != InvoiceStatus.PROCESSING:
        settle(session, invoice, org, now, actor_user_id=actor)
        return
    others = await session.scalar(
        select(func.count(Payment.id)).where(
            Payment.invoice_id == invoice.id,
            Payment.id != payment.id,
            Payment.status.in_(IN_FLIGHT),
        )
    )
    if others and invoice.balance_due > 0:
        return
    if invoice.balance_due <= 0:
        target = InvoiceStatus.PAID
    else:
        target = unpaid_status_now(invoice, local_date(now, org.timezone), org.overdue_after_days)
    previous = invoice.status_before_processing
    invoice.status_before_processing = None
    mark_milestones(session, invoice, target, now)
    set_status(
        session,
        invoice,
        target,
        now,
        actor_user_id=actor,
        payment_id=payment.id,
        status_before_processing=previous,
    )


def _autopay_due(account: Account, invoice: Invoice, now: datetime) -> bool:
    if not (account.autopay and account.active and account.default_payment_method_id):
        return False
    if invoice.autopay_attempts == 0:
        return True
    return (
        invoice.autopay_attempts < MAX_AUTOPAY_ATTEMPTS
        and invoice.autopay_retry_at is not None
        and invoice.autopay_retry_at <= now
    )


def _schedule_autopay_retry(org: Organization, invoice: Invoice, now: datetime) -> None:
    if invoice.autopay_attempts < MAX_AUTOPAY_ATTEMPTS and invoice.balance_due > 0:
        invoice.autopay_retry_at = now + timedelta(hours=org.autopay_retry_hours)
    else:
        invoice.autopay_retry_at = None


async def _fail_without_intent(
    session: AsyncSession,
    org: Organization,
    payment_id: int,
    code: str | None,
    message: str,
    now: datetime,
    *,
    canceled: bool = False,
) -> Payment:
    """The gateway definitely refused before any intent existed."""
    found = await session.get(Payment, payment_id)
    assert found is not None
    account = await lock_account(session, org.id, found.account_id)
    invoice = await lock_invoice(session, org.id, found.invoice_id)
    payment = await session.scalar(
        select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
    )
    assert payment is not None
    target = PaymentStatus.CANCELED if canceled else PaymentStatus.FAILED
    await _move(session, org, account, invoice, payment, target, now, error=(code, message))
    return payment


# --------------------------------------------------------------------------- card payments


async def _open_card_payment(
    session: AsyncSession,
    org_id: int,
    invoice_id: int,
    now: datetime,
    *,
    off_session: bool,
    type_: PaymentType,
    actor_user_id: int | None,
    statuses: Sequence[InvoiceStatus] | None = None,
) -> Payment:
    """Transaction 1: the PENDING row, and the invoice to PROCESSING."""
    account, invoice = await _lock_invoice_and_account(session, org_id, invoice_id)
    if off_session:
        statuses = statuses or (InvoiceStatus.DUE, InvoiceStatus.OVERDUE)
        what = "charging the saved card"
    else:
        statuses = OUTSTANDING_STATUSES
        what = "paying by card"
    _require_payable(invoice, statuses, what)
    if off_session and not (account.stripe_customer_id and account.default_payment_method_id):
        raise InvalidStateError(
            f"The account {account.name!r} has no saved card; the member can pay "
            f"{_label(invoice)} in the app, or record an offline payment.",
            account_id=account.id,
        )
    if type_ == PaymentType.AUTOMATIC:
        # Checked again under the locks: another worker may have charged it already.
        if not _autopay_due(account, invoice, now):
            raise InvalidStateError(f"{_label(invoice)} is not due for auto-pay.")
        invoice.autopay_attempts += 1
        invoice.autopay_retry_at = None
        attempt = invoice.autopay_attempts
    else:
        earlier = await session.scalar(
            select(func.count(Payment.id)).where(
                Payment.invoice_id == invoice.id,
                Payment.method == PaymentMethod.CARD,
            )
        )
        attempt = int(earlier or 0) + 1
    payment = Payment(
        organization_id=org_id,
        account_id=account.id,
        invoice_id=invoice.id,
        amount=invoice.balance_due,
        applied_amount=0,
        refunded_amount=0,
        currency=invoice.currency,
        status=PaymentStatus.PENDING,
        type=type_,
        method=PaymentMethod.CARD,
        attempt=attempt,
        gateway_payment_method_id=account.default_payment_method_id if off_session else None,
        created_by_user_id=actor_user_id,
        created_at=now,
        updated_at=now,
    )
    session.add(payment)
    await session.flush()
    _record_created(session, payment, now)
    invoice.status_before_processing = invoice.status
    set_status(
        session,
        invoice,
        InvoiceStatus.PROCESSING,
        now,
        actor_user_id=actor_user_id,
        payment_id=payment.id,
    )
    await session.flush()
    return payment


async def _drive(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org_id: int,
    payment_id: int,
    now: datetime,
    *,
    raise_refusal: bool,
) -> CardPayment:
    """Steps 2 and 3 for a payment row: ask the gateway (same key every time) and
    record its answer. Safe to call again for the same payment at any time."""
    async with sessionmaker() as session:
        payment = await session.get(Payment, payment_id)
        if payment is None or payment.organization_id != org_id:
            raise NotFoundError(f"No payment {payment_id} in this organization.")
        account = await session.get(Account, payment.account_id)
        assert account is not None
    if payment.status not in IN_FLIGHT:
        return CardPayment(payment)

    refusal: GatewayError | None = None
    intent: IntentState | None = None
    try:
        if payment.gateway_payment_intent_id:
            intent = await gateway.retrieve_payment_intent(payment.gateway_payment_intent_id)
        else:
            off_session = payment.gateway_payment_method_id is not None
            intent = await gateway.create_payment_intent(
                amount=payment.amount,
                currency=payment.currency,
                customer=account.stripe_customer_id,
                payment_method=payment.gateway_payment_method_id,
                off_session=off_session,
                confirm=off_session,
                idempotency_key=payment_idempotency_key(payment.id),
                metadata=intent_metadata(payment),
            )
    except CardDeclinedError as exc:
        intent = exc.intent
        refusal = exc
    except GatewayOutcomeUnknownError:
        # The row stays PENDING; reconcile_payments asks again with the same key.
        raise
    except GatewayError as exc:
        refusal = exc

    async with sessionmaker() as session, session.begin():
        org = await _organization(session, org_id)
        if intent is not None:
            payment = await apply_payment_intent_state(session, org, payment_id, intent, now)
        else:
            assert refusal is not None
            code = refusal.extensions.get("gateway_code") or refusal.extensions.get("decline_code")
            payment = await _fail_without_intent(
                session, org, payment_id, code, refusal.message, now
            )
    if refusal is not None and raise_refusal and not isinstance(refusal, CardDeclinedError):
        raise refusal
    secret = intent.client_secret if intent is not None and payment.status in IN_FLIGHT else None
    return CardPayment(payment, secret)


async def _start(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    invoice_id: int,
    now: datetime,
    *,
    off_session: bool,
    type_: PaymentType,
    operation: str,
    actor_user_id: int | None,
    idempotency_key: str | None,
) -> CardPayment:
    if not gateway.enabled:
        raise GatewayUnavailableError(OFF_MESSAGE)
    if not off_session:
        async with sessionmaker() as session:
            account_id = (await _load_invoice(session, org.id, invoice_id)).account_id
        await ensure_customer(sessionmaker, gateway, org, account_id)

    async def open_payment(session: AsyncSession) -> dict[str, Any]:
        payment = await _open_card_payment(
            session,
            org.id,
            invoice_id,
            now,
            off_session=off_session,
            type_=type_,
            actor_user_id=actor_user_id,
        )
        return {"payment_id": payment.id}

    if idempotency_key:
        opened = await run_idempotent(
            sessionmaker,
            org.id,
            idempotency_key,
            operation,
            {"invoice_id": invoice_id},
            open_payment,
            now=now,
        )
    else:
        async with sessionmaker() as session, session.begin():
            opened = await open_payment(session)
    return await _drive(
        sessionmaker, gateway, org.id, int(opened["payment_id"]), now, raise_refusal=True
    )


async def start_card_payment(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    invoice_id: int,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    idempotency_key: str | None = None,
) -> CardPayment:
    """Member "pay now" (rules §6.3): a PaymentIntent for the invoice's balance, whose
    ``client_secret`` the app's card sheet confirms; the invoice is PROCESSING until
    the webhook (or 30 minutes without one) settles it. UPCOMING, DUE and OVERDUE
    invoices can be paid. Owns its transactions (takes a sessionmaker). With an
    ``idempotency_key`` a retry returns the same payment and client secret."""
    return await _start(
        sessionmaker,
        gateway,
        org,
        invoice_id,
        now,
        off_session=False,
        type_=PaymentType.MANUAL,
        operation="payInvoice",
        actor_user_id=actor_user_id,
        idempotency_key=idempotency_key,
    )


async def charge_now(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    invoice_id: int,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    idempotency_key: str | None = None,
) -> Payment:
    """Admin "charge now" (rules §6.3): charge a DUE/OVERDUE invoice's balance to the
    account's saved card, off-session. A decline is not an exception: the returned
    payment is FAILED with the gateway's code and message (every attempt is a row).
    Owns its transactions (takes a sessionmaker)."""
    started = await _start(
        sessionmaker,
        gateway,
        org,
        invoice_id,
        now,
        off_session=True,
        type_=PaymentType.MANUAL,
        operation="chargeInvoice",
        actor_user_id=actor_user_id,
        idempotency_key=idempotency_key,
    )
    return started.payment


async def open_saved_card_payment(
    session: AsyncSession, org_id: int, invoice_id: int, now: datetime
) -> Payment:
    """Transaction 1 of a payment from an e-mail's pay link: the member confirms, and
    the account's saved card is charged off-session for the balance of an
    UPCOMING/DUE/OVERDUE invoice. Does not commit; ``drive_card_payment`` follows."""
    return await _open_card_payment(
        session,
        org_id,
        invoice_id,
        now,
        off_session=True,
        type_=PaymentType.MANUAL,
        actor_user_id=None,
        statuses=OUTSTANDING_STATUSES,
    )


async def drive_card_payment(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org_id: int,
    payment_id: int,
    now: datetime,
) -> Payment:
    """Steps 2 and 3 for a payment row opened by ``open_saved_card_payment``: a
    decline is not an exception, the payment comes back FAILED with its reason."""
    return (
        await _drive(sessionmaker, gateway, org_id, payment_id, now, raise_refusal=False)
    ).payment


async def ensure_customer(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, org: Organization, account_id: int
) -> str:
    """The account's gateway customer, created on first need (one per account: the
    idempotency key is the account's)."""
    async with sessionmaker() as session:
        account = await session.get(Account, account_id)
        if account is None or account.organization_id != org.id:
            raise NotFoundError(f"No account {account_id} in this organization.")
    if account.stripe_customer_id:
        return account.stripe_customer_id
    try:
        customer = await gateway.create_customer(
            email=account.email,
            name=account.name,
            metadata={
                "deskbill_account_id": str(account.id),
                "deskbill_organization_id": str(org.id),
            },
            idempotency_key=f"deskbill-customer-{account.id}",
        )
    except GatewayOutcomeUnknownError as unknown:
        # Nothing of ours exists yet (no payment row, no saved customer): the generic
        # "the attempt is kept" would be untrue. A retry reuses the same customer key.
        raise GatewayUnavailableError(
            "The card gateway could not be reached, so nothing was charged and no payment "
            "was started. Try again in a moment.",
            **unknown.extensions,
        ) from unknown
    async with sessionmaker() as session, session.begin():
        locked = await lock_account(session, org.id, account_id)
        if not locked.stripe_customer_id:
            locked.stripe_customer_id = customer
        return locked.stripe_customer_id


async def start_card_setup(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    account_id: int,
    *,
    request_key: str,
) -> str:
    """A SetupIntent client secret for saving a card for auto-pay; the
    ``setup_intent.succeeded`` webhook makes it the account's default method.
    ``request_key`` makes a retried request return the same SetupIntent."""
    if not gateway.enabled:
        raise GatewayUnavailableError(OFF_MESSAGE)
    customer = await ensure_customer(sessionmaker, gateway, org, account_id)
    return await gateway.create_setup_intent(
        customer=customer, idempotency_key=f"deskbill-setup-{account_id}-{request_key}"
    )


# --------------------------------------------------------------------------- time-driven work


async def _in_flight_ids(
    sessionmaker: Sessionmaker, org_id: int, *, older_than: datetime, pending_only: bool
) -> list[int]:
    statuses = (PaymentStatus.PENDING,) if pending_only else IN_FLIGHT
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(Payment.id)
            .where(
                Payment.organization_id == org_id,
                Payment.method == PaymentMethod.CARD,
                Payment.status.in_(statuses),
                Payment.created_at <= older_than,
            )
            .order_by(Payment.id)
        )
        return list(rows)


async def reconcile_payments(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    now: datetime,
    *,
    older_than: timedelta = RECONCILE_AFTER,
) -> list[Payment]:
    """Ask the gateway again about PENDING rows whose first call never got an answer
    (same idempotency key: the intent is found, or created exactly once)."""
    if not gateway.enabled:
        return []
    done = []
    for payment_id in await _in_flight_ids(
        sessionmaker, org.id, older_than=now - older_than, pending_only=True
    ):
        try:
            done.append(
                (
                    await _drive(
                        sessionmaker, gateway, org.id, payment_id, now, raise_refusal=False
                    )
                ).payment
            )
        except GatewayOutcomeUnknownError:
            continue
    return done


async def abandon_stale_payments(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    now: datetime,
) -> list[Payment]:
    """rules §6.3: a card payment still in flight 30 minutes after it started is
    abandoned. The gateway is asked first — a payment that in fact succeeded or failed
    is recorded as such — and an open intent is canceled before the payment is."""
    if not gateway.enabled:
        return []
    settled = []
    for payment_id in await _in_flight_ids(
        sessionmaker, org.id, older_than=now - ABANDON_AFTER, pending_only=False
    ):
        try:
            settled.append(await _abandon(sessionmaker, gateway, org.id, payment_id, now))
        except GatewayOutcomeUnknownError:
            continue
    return settled


async def _abandon(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org_id: int,
    payment_id: int,
    now: datetime,
) -> Payment:
    driven = await _drive(sessionmaker, gateway, org_id, payment_id, now, raise_refusal=False)
    payment = driven.payment
    if payment.status not in IN_FLIGHT:
        return payment
    intent_id = payment.gateway_payment_intent_id
    if intent_id is None:
        async with sessionmaker() as session, session.begin():
            org = await _organization(session, org_id)
            return await _fail_without_intent(
                session,
                org,
                payment_id,
                "abandoned",
                "The payment was not completed within 30 minutes.",
                now,
                canceled=True,
            )
    try:
        intent = await gateway.cancel_payment_intent(intent_id)
    except GatewayOutcomeUnknownError:
        raise
    except GatewayError:
        # It moved on (succeeded, or was canceled) between our look and the cancel.
        intent = await gateway.retrieve_payment_intent(intent_id)
    async with sessionmaker() as session, session.begin():
        org = await _organization(session, org_id)
        payment = await apply_payment_intent_state(session, org, payment_id, intent, now)
        if payment.status == PaymentStatus.CANCELED and payment.error_code is None:
            payment.error_code = "abandoned"
            payment.error_message = "The payment was not completed within 30 minutes."
    return payment


async def autopay_candidates(
    session: AsyncSession, org_id: int, now: datetime, *, account_id: int | None = None
) -> list[int]:
    """DUE/OVERDUE invoices whose account pays automatically with a saved card, never
    charged yet, or whose single retry is due."""
    query = (
        select(Invoice.id)
        .join(Account, Account.id == Invoice.account_id)
        .where(
            Invoice.organization_id == org_id,
            Invoice.document_type == DocumentType.INVOICE,
            Invoice.status.in_((InvoiceStatus.DUE, InvoiceStatus.OVERDUE)),
            Invoice.total > Invoice.amount_paid + Invoice.credit_applied,
            Account.autopay.is_(True),
            Account.active.is_(True),
            Account.stripe_customer_id.is_not(None),
            Account.default_payment_method_id.is_not(None),
            (Invoice.autopay_attempts == 0)
            | (
                (Invoice.autopay_attempts < MAX_AUTOPAY_ATTEMPTS)
                & (Invoice.autopay_retry_at.is_not(None))
                & (Invoice.autopay_retry_at <= now)
            ),
        )
        .order_by(Invoice.id)
    )
    if account_id is not None:
        query = query.where(Invoice.account_id == account_id)
    return list(await session.scalars(query))


async def run_autopay(
    sessionmaker: Sessionmaker,
    gateway: PaymentGateway,
    org: Organization,
    now: datetime,
    *,
    account_id: int | None = None,
) -> list[Payment]:
    """rules §6.2: charge every eligible invoice off-session once, and once more
    ``autopay_retry_hours`` after a failure; then only manual payment is left.
    Each charge is its own pair of transactions, so a crash leaves at most a PENDING
    row that ``reconcile_payments`` completes. Does nothing when the gateway is off."""
    if not gateway.enabled:
        return []
    async with sessionmaker() as session:
        invoice_ids = await autopay_candidates(session, org.id, now, account_id=account_id)
    charged = []
    for invoice_id in invoice_ids:
        async with sessionmaker() as session, session.begin():
            try:
                payment = await _open_card_payment(
                    session,
                    org.id,
                    invoice_id,
                    now,
                    off_session=True,
                    type_=PaymentType.AUTOMATIC,
                    actor_user_id=None,
                )
            except InvalidStateError:
                continue
        try:
            driven = await _drive(
                sessionmaker, gateway, org.id, payment.id, now, raise_refusal=False
            )
            charged.append(driven.payment)
        except GatewayOutcomeUnknownError:
            charged.append(payment)
    return charged


async def run_payment_jobs(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, org: Organization, now: datetime
) -> list[Payment]:
    """The billing run's payment work for one organization, in a safe order: finish
    unanswered attempts (payments and refunds), abandon stale ones, then charge
    auto-pay invoices. Each gateway call sits between its own transactions."""
    touched = await reconcile_payments(sessionmaker, gateway, org, now)
    touched += await abandon_stale_payments(sessionmaker, gateway, org, now)
    touched += await run_autopay(sessionmaker, gateway, org, now)
    await reconcile_refunds(sessionmaker, gateway, org, now)
    return touched


@dataclass(frozen=True)
class PaymentJobs:
    """``run_payment_jobs`` with the gateway bound: the shape of the billing run's
    per-organization ``ORG_JOBS`` — ``(sessionmaker, org, as_of)``."""

    gateway: PaymentGateway

    async def __call__(
        self, sessionmaker: Sessionmaker, org: Organization, as_of: datetime
    ) -> list[Payment]:
        try:
            gateway = gateway_for(self.gateway, org)
        except SandboxLiveKeyError as refused:
            log.warning("payment jobs skipped: %s", refused.message)
            return []
        return await run_payment_jobs(sessionmaker, gateway, org, as_of)


def register_payment_jobs(gateway: PaymentGateway) -> PaymentJobs:
    """Add the payment jobs (reconcile, abandon, auto-pay) to every billing run, with
    the configured gateway; calling it again replaces the earlier registration. The
    app calls this once the gateway is built from settings."""
    from services import billing

    job = PaymentJobs(gateway)
    billing.ORG_JOBS[:] = [j for j in billing.ORG_JOBS if not isinstance(j, PaymentJobs)]
    billing.ORG_JOBS.append(job)
    return job
