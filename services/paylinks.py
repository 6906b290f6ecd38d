"""Pay links: the signed, expiring link in an invoice e-mail that opens a page for
that one invoice, without signing in, where the member pays it by card.

A link is ``<notification id>.<expiry, unix seconds>.<HMAC-SHA256>``, signed with a
secret this installation generates once and keeps in its database
(``services.instance``, name ``pay_links``), so every process sharing the database
checks every link and nothing in the source or the configuration signs one. The
notification row it came with is its state: expiry, and the payment it started.

Paying confirms a PaymentIntent server-side with the account's saved card
(off-session, as auto-pay does) — no card form, so nothing is loaded from a CDN and
no Stripe.js runs in the page. An account without a saved card is told to save one
in the app. The webhook then settles the payment exactly as for ``payInvoice``.
A tampered, expired or used link, or one for an invoice that is paid or cannot be
paid, says so and charges nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    DocumentType,
    Invoice,
    InvoiceStatus,
    Notification,
    Organization,
    Payment,
    PaymentStatus,
)
from models.enums import OUTSTANDING_STATUSES
from services import money
from services.declines import decline_words
from services.errors import DomainError
from services.gateway import GatewayOutcomeUnknownError, PaymentGateway
from services.instance import instance_secret
from services.invoices import lines_of
from services.payments import drive_card_payment, open_saved_card_payment

Sessionmaker = async_sessionmaker[AsyncSession]

SECRET_NAME = "pay_links"
MAX_TOKEN_CHARS = 200
_LIVE = (PaymentStatus.PENDING, PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED)


async def pay_link_secret(sessionmaker: Sessionmaker, now: datetime) -> str:
    return await instance_secret(sessionmaker, SECRET_NAME, now)


def _mac(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), f"deskbill-pay-link:{payload}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def sign(secret: str, notification_id: int, expires_at: datetime) -> str:
    payload = f"{notification_id}.{int(expires_at.timestamp())}"
    return f"{payload}.{_mac(secret, payload)}"


def verify(secret: str, token: str) -> tuple[int, datetime] | None:
    """The notification id and expiry a token stands for, or None when it is not one
    we signed (tampered, truncated, or from another installation)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    payload = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_mac(secret, payload), parts[2]):
        return None
    notification_id, expires = int(parts[0]), int(parts[1])
    if not (0 < notification_id < 2**63 and 0 < expires < 2**40):
        return None
    return notification_id, datetime.fromtimestamp(expires, UTC)


class LinkState(StrEnum):
    PAYABLE = "PAYABLE"
    INVALID = "INVALID"
    EXPIRED = "EXPIRED"
    USED = "USED"
    PAID = "PAID"
    NOT_PAYABLE = "NOT_PAYABLE"
    NO_SAVED_CARD = "NO_SAVED_CARD"
    CARDS_OFF = "CARDS_OFF"
    PAYMENT_SUCCEEDED = "PAYMENT_SUCCEEDED"
    PAYMENT_PROCESSING = "PAYMENT_PROCESSING"
    PAYMENT_FAILED = "PAYMENT_FAILED"


# What each state answers over HTTP: a link that is no good any more is Gone, one that
# was never ours Not Found, an invoice that cannot be paid a Conflict, a decline 402.
HTTP_STATUS = {
    LinkState.PAYABLE: 200,
    LinkState.INVALID: 404,
    LinkState.EXPIRED: 410,
    LinkState.USED: 410,
    LinkState.PAID: 409,
    LinkState.NOT_PAYABLE: 409,
    LinkState.NO_SAVED_CARD: 200,
    LinkState.CARDS_OFF: 200,
    LinkState.PAYMENT_SUCCEEDED: 200,
    LinkState.PAYMENT_PROCESSING: 202,
    LinkState.PAYMENT_FAILED: 402,
}


@dataclass(frozen=True)
class PageLine:
    description: str
    quantity: int
    amount: str


@dataclass(frozen=True)
class PayPage:
    """What the pay page shows: the state in a sentence, and (once the link checks
    out) the invoice's number, lines and balance — nothing else of the account."""

    state: LinkState
    message: str
    organization: str | None = None
    number: str | None = None
    due_date: str | None = None
    lines: list[PageLine] = field(default_factory=list)
    subtotal: str | None = None
    tax: str | None = None
    total: str | None = None
    paid: str | None = None
    balance: str | None = None
    reply_to: str | None = None

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.state]

    @property
    def can_pay(self) -> bool:
        return self.state in (LinkState.PAYABLE, LinkState.PAYMENT_FAILED)


_INVALID = PayPage(
    LinkState.INVALID,
    "This payment link is not valid. Use the link in your latest invoice e-mail, "
    "or pay the invoice in the app.",
)


def _date(day: date) -> str:
    return f"{day.day} {day:%B %Y}"


async def _invoice_page(
    session: AsyncSession, org: Organization, invoice: Invoice, state: LinkState, message: str
) -> PayPage:
    fmt = lambda minor: money.format_amount(minor, invoice.currency)  # noqa: E731
    lines = [
        PageLine(line.description, line.quantity, fmt(line.total))
        for line in await lines_of(session, invoice.id)
    ]
    return PayPage(
        state,
        message,
        organization=org.name,
        number=invoice.number,
        due_date=_date(invoice.due_date),
        lines=lines,
        subtotal=fmt(invoice.subtotal),
        tax=fmt(invoice.tax),
        total=fmt(invoice.total),
        paid=fmt(invoice.amount_paid + invoice.credit_applied),
        balance=fmt(invoice.balance_due),
        reply_to=org.email_reply_to or org.email_from,
    )


async def _state(
    session: AsyncSession, secret: str, token: str, now: datetime, gateway: PaymentGateway
) -> tuple[LinkState, str, Notification | None, Invoice | None, Organization | None]:
    found = verify(secret, token)
    if found is None:
        return LinkState.INVALID, _INVALID.message, None, None, None
    notification_id, expires_at = found
    note = await session.get(Notification, notification_id)
    if note is None or note.invoice_id is None or note.pay_link_expires_at is None:
        return LinkState.INVALID, _INVALID.message, None, None, None
    org = await session.get(Organization, note.organization_id)
    invoice = await session.get(Invoice, note.invoice_id)
    if org is None or invoice is None or invoice.organization_id != org.id:
        return LinkState.INVALID, _INVALID.message, None, None, None
    label = invoice.number or "this invoice"
    if now >= expires_at:
        return (
            LinkState.EXPIRED,
            f"This payment link expired on {_date(expires_at.date())}. Pay {label} in the "
            "app, or ask for the invoice to be sent again.",
            note, invoice, org,
        )  # fmt: skip
    if invoice.status == InvoiceStatus.PAID:
        return LinkState.PAID, f"{label} is paid: there is nothing left to pay.", note, invoice, org
    if note.pay_link_payment_id is not None:
        payment = await session.get(Payment, note.pay_link_payment_id)
        if payment is not None and payment.status in _LIVE:
            return (
                LinkState.USED,
                f"This payment link was already used to pay {label}; it charges nothing more.",
                note, invoice, org,
            )  # fmt: skip
    if (
        invoice.document_type != DocumentType.INVOICE
        or invoice.status not in OUTSTANDING_STATUSES
        or invoice.balance_due <= 0
    ):
        why = {
            InvoiceStatus.VOID: "was voided",
            InvoiceStatus.PROCESSING: "has a payment in progress",
        }.get(InvoiceStatus(invoice.status), "cannot be paid now")
        return (
            LinkState.NOT_PAYABLE, f"{label} {why}; nothing was charged.", note, invoice, org
        )  # fmt: skip
    if not gateway.enabled:
        return (
            LinkState.CARDS_OFF,
            f"Card payments are not available here. Contact {org.name} to pay {label}.",
            note, invoice, org,
        )  # fmt: skip
    account = await session.get(Account, invoice.account_id)
    if account is None or not (account.stripe_customer_id and account.default_payment_method_id):
        return (
            LinkState.NO_SAVED_CARD,
            f"No card is saved for this account. Save a card in the app, then open this "
            f"link again to pay {label} — or pay it in the app.",
            note, invoice, org,
        )  # fmt: skip
    return (
        LinkState.PAYABLE,
        f"Pay {label} with the card saved for your account.",
        note, invoice, org,
    )  # fmt: skip


async def page(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, token: str, now: datetime
) -> PayPage:
    """What ``GET /pay/{token}`` shows."""
    secret = await pay_link_secret(sessionmaker, now)
    async with sessionmaker() as session:
        state, message, _note, invoice, org = await _state(session, secret, token, now, gateway)
        if invoice is None or org is None:
            return _INVALID
        return await _invoice_page(session, org, invoice, state, message)


async def pay(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, token: str, now: datetime
) -> PayPage:
    """``POST /pay/{token}``: charge the saved card for the balance, once per link.

    The link is checked again under the account and invoice locks in the transaction
    that opens the payment, and that transaction records the payment on the link, so
    two clicks (or two tabs) open one payment: the second finds the link used."""
    secret = await pay_link_secret(sessionmaker, now)
    async with sessionmaker() as session:
        state, message, note, invoice, org = await _state(session, secret, token, now, gateway)
    if note is None or invoice is None or org is None:
        return _INVALID
    if state != LinkState.PAYABLE:
        async with sessionmaker() as session:
            return await _invoice_page(session, org, invoice, state, message)
    try:
        async with sessionmaker() as session, session.begin():
            payment = await open_saved_card_payment(session, org.id, invoice.id, now)
            locked = await session.scalar(
                select(Notification)
                .where(Notification.id == note.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            assert locked is not None
            if locked.pay_link_payment_id is not None:
                previous = await session.get(Payment, locked.pay_link_payment_id)
                if previous is not None and previous.status in _LIVE:
                    raise _LinkUsed()
            locked.pay_link_used_at = now
            locked.pay_link_payment_id = payment.id
    except _LinkUsed:
        async with sessionmaker() as session:
            state, message, _n, fresh, _o = await _state(session, secret, token, now, gateway)
            return await _invoice_page(session, org, fresh or invoice, state, message)
    except DomainError as refused:
        async with sessionmaker() as session:
            fresh = await session.get(Invoice, invoice.id)
            return await _invoice_page(
                session, org, fresh or invoice, LinkState.NOT_PAYABLE, refused.message
            )
    label = invoice.number or "The invoice"
    amount = money.format_amount(payment.amount, payment.currency)
    try:
        paid = await drive_card_payment(sessionmaker, gateway, org.id, payment.id, now)
    except GatewayOutcomeUnknownError:
        # The attempt is kept and asked about again by the billing run (same key).
        async with sessionmaker() as session:
            fresh = await session.get(Invoice, invoice.id)
            return await _invoice_page(
                session, org, fresh or invoice, LinkState.PAYMENT_PROCESSING,
                f"The card gateway did not answer yet; the payment of {amount} is being "
                "checked. You will get a receipt by e-mail once it completes.",
            )  # fmt: skip
    if paid.status == PaymentStatus.SUCCEEDED:
        state, message = (
            LinkState.PAYMENT_SUCCEEDED,
            (f"Thank you: {amount} was paid on {label}. A receipt is on its way by e-mail."),
        )
    elif paid.status == PaymentStatus.FAILED:
        words = decline_words(paid.error_code, paid.error_message)
        state, message = (
            LinkState.PAYMENT_FAILED,
            (f"The payment of {amount} did not go through. {words.reason} {words.what_to_do}"),
        )
    else:
        state, message = (
            LinkState.PAYMENT_PROCESSING,
            (
                f"The payment of {amount} is being processed; you will get a receipt by e-mail "
                "once it completes."
            ),
        )
    async with sessionmaker() as session:
        fresh = await session.get(Invoice, invoice.id)
        return await _invoice_page(session, org, fresh or invoice, state, message)


class _LinkUsed(Exception):
    """Raised inside the paying transaction to roll back the payment it opened."""
