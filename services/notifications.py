"""E-mail notifications (rules §15): derived from the event log, one row per
(event, recipient, kind), then delivered with retries.

Three steps, each safe to repeat, each its own transaction:

1. ``derive_from_log`` reads the events after the stored cursor (the cursor row is
   locked, so two workers never derive the same batch at once), inserts one
   notification per (event, recipient, kind) — ``INSERT … ON CONFLICT DO NOTHING``
   under the table's UNIQUE constraint — and moves the cursor, all in one
   transaction: a crash rolls back both, and the batch is derived again.
2. ``derive_scheduled`` makes the time-driven ones: the upcoming-invoice reminder on
   the organization's local day ``reminder_days`` before the due date (keyed on the
   invoice's first event), and the admins' daily digest of what turned overdue the
   local day before (keyed on that day's first "became overdue" event).
3. ``deliver_due`` claims due rows (``SENDING`` with a lease, ``SKIP LOCKED``),
   sends them outside any transaction, and records the outcome: ``SENT``, or back to
   ``PENDING`` with exponential backoff, ``FAILED`` after the last attempt. With no
   SMTP server configured a row is ``NOT_SENT``: recorded, never sent. A worker that
   dies between the server's answer and its own commit sends that message again
   when the lease ends (at least once); the Message-ID stays the same.

The message is rendered when the row is made (Jinja2 templates in
``services/templates/notifications``, HTML and text), so a retry sends what the
member would have read then; amounts are in the currency's exponent and dates in
the organization's timezone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import (
    Account,
    AccountKind,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    Notification,
    NotificationCursor,
    NotificationKind,
    NotificationStatus,
    Organization,
    Payment,
    PaymentStatus,
    PaymentType,
    Refund,
    RefundStatus,
    Role,
    TeamMembership,
    User,
)
from models.enums import OUTSTANDING_STATUSES
from services import events, money
from services.clock import Clock, local_date, organization_now, start_of_day
from services.declines import decline_words
from services.errors import InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.invoices import lines_of, local_today
from services.mailer import MailDeliveryError, Mailer, OutgoingMail
from services.paylinks import sign
from services.payments import MAX_AUTOPAY_ATTEMPTS
from services.refunds import REFUND_ORIGIN

log = logging.getLogger("deskbill.notifications")

Sessionmaker = async_sessionmaker[AsyncSession]
CURSOR = "email"
TEMPLATES = Path(__file__).parent / "templates" / "notifications"
MEMBER_KINDS = tuple(k for k in NotificationKind if not k.startswith("ADMIN_"))
# Kinds that carry a pay link when their invoice can still be paid.
_PAY_LINK_KINDS = {
    NotificationKind.INVOICE_FINALIZED,
    NotificationKind.INVOICE_SENT,
    NotificationKind.INVOICE_UPCOMING,
    NotificationKind.PAYMENT_FAILED,
    NotificationKind.AUTOPAY_RETRY_SCHEDULED,
}
_EMAIL_MAX = 254
_DIGEST_LOOKBACK_DAYS = 3


@dataclass(frozen=True)
class NotificationConfig:
    """What the app's settings say about e-mail (``app.settings``)."""

    public_url: str = "http://127.0.0.1:8000"
    default_sender: str = "deskbill@localhost"
    pay_link_days: int = 30
    max_attempts: int = 8
    backoff_seconds: float = 60.0
    max_backoff_seconds: float = 6 * 3600.0
    lease_seconds: float = 300.0
    batch_size: int = 200
    # Where an invoice's PDF is served (``app.documents``), from its row id; the graph's
    # ids are not this layer's to make, so the app passes the route in.
    invoice_document_path: Callable[[int], str] | None = None


T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` and, if the caller is cancelled meanwhile, let it finish first:
    a worker stopped mid-round stops between its transactions, never inside one
    (a transaction cut at an ``await`` can leave SQLite's write lock held)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


# --------------------------------------------------------------------------- settings


def kinds_off(org: Organization) -> set[str]:
    return {k for k in (org.notifications_off or "").split(",") if k}


def kind_on(org: Organization, kind: NotificationKind) -> bool:
    if kind == NotificationKind.INVOICE_UPCOMING and org.reminder_days == 0:
        return False
    return str(kind) not in kinds_off(org)


def _address(value: str | None, field_name: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    local, at, domain = value.partition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(value) > _EMAIL_MAX
        or any(c.isspace() or c in '<>,;"\\' or ord(c) < 32 for c in value)
    ):
        raise ValidationError(
            f"{field_name} must be one e-mail address such as billing@example.com.",
            field=field_name,
        )
    return value


async def update_settings(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    actor_user_id: int | None,
    reminder_days: int | None = None,
    enabled_kinds: Sequence[NotificationKind] | None = None,
    email_from: str | None = None,
    email_reply_to: str | None = None,
) -> Organization:
    """Change the organization's notification settings (``None`` leaves one as it is;
    an empty address clears it). Records ``organization.policy_updated``."""
    if reminder_days is not None and not 0 <= reminder_days <= 60:
        raise ValidationError("reminderDays must be a whole number from 0 to 60.")
    changes: dict[str, Any] = {}
    if reminder_days is not None:
        changes["reminder_days"] = reminder_days
    if enabled_kinds is not None:
        enabled = {str(k) for k in enabled_kinds}
        changes["notifications_off"] = ",".join(
            str(k) for k in NotificationKind if k not in enabled
        )
    if email_from is not None:
        changes["email_from"] = _address(email_from, "emailFrom")
    if email_reply_to is not None:
        changes["email_reply_to"] = _address(email_reply_to, "emailReplyTo")
    changes = {k: v for k, v in changes.items() if getattr(org, k) != v}
    if not changes:
        return org
    previous = {k: getattr(org, k) for k in changes}
    for name, value in changes.items():
        setattr(org, name, value)
    org.policy_updated_at = now
    events.record(
        session,
        organization_id=org.id,
        type=EventType.POLICY_UPDATED,
        at=now,
        actor_user_id=actor_user_id,
        changes=changes,
        previous=previous,
    )
    await session.flush()
    return org


async def set_reminders(
    session: AsyncSession, org: Organization, account_id: int, enabled: bool, now: datetime,
    *, actor_user_id: int | None,
) -> Account:  # fmt: skip
    """A member turns upcoming-invoice reminders off (or on) for an account; receipts
    and the other notifications are not theirs to turn off."""
    account = await session.get(Account, account_id)
    if account is None or account.organization_id != org.id:
        raise NotFoundError(f"No account {account_id} in this organization.")
    if account.reminders != enabled:
        account.reminders = enabled
        events.record(
            session,
            organization_id=org.id,
            type=EventType.ACCOUNT_UPDATED,
            at=now,
            account_id=account.id,
            actor_user_id=actor_user_id,
            changes={"reminders": enabled},
        )
        await session.flush()
    return account


async def send_invoice(
    session: AsyncSession, org: Organization, invoice_id: int, now: datetime,
    *, actor_user_id: int | None,
) -> Invoice:  # fmt: skip
    """An admin sends a finalized invoice by hand: an ``invoice.sent`` event, from
    which the worker makes the e-mail (with its pay link while it can be paid)."""
    invoice = await session.get(Invoice, invoice_id)
    if invoice is None or invoice.organization_id != org.id:
        raise NotFoundError(f"No invoice {invoice_id} in this organization.")
    label = invoice.number or f"invoice {invoice.id}"
    if invoice.status == InvoiceStatus.PENDING:
        raise InvalidStateError(
            f"{label} is still pending; finalize it before sending it.", invoice_id=invoice.id
        )
    if invoice.status == InvoiceStatus.VOID or invoice.document_type != DocumentType.INVOICE:
        raise InvalidStateError(
            f"{label} is {'void' if invoice.status == InvoiceStatus.VOID else 'a credit note'}; "
            "only a finalized invoice can be sent.",
            invoice_id=invoice.id,
        )
    account = await session.get(Account, invoice.account_id)
    assert account is not None
    if await billing_contact(session, account) is None:
        raise InvalidStateError(
            f"The account {account.name!r} has no e-mail address to send {label} to; "
            "set the account's billing e-mail first.",
            account_id=account.id,
        )
    events.record(
        session,
        organization_id=org.id,
        type=EventType.INVOICE_SENT,
        at=now,
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        actor_user_id=actor_user_id,
        number=invoice.number,
    )
    await session.flush()
    return invoice


# --------------------------------------------------------------------------- recipients


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    user_id: int | None = None


async def billing_contact(session: AsyncSession, account: Account) -> Recipient | None:
    """Who hears about an account's invoices: its billing e-mail when set; else a
    user's own address, or for a team its first member (who set the team up)."""
    if account.email:
        return Recipient(account.email, account.name, account.user_id)
    if account.kind == AccountKind.USER and account.user_id is not None:
        user = await session.get(User, account.user_id)
    else:
        user = await session.scalar(
            select(User)
            .join(TeamMembership, TeamMembership.user_id == User.id)
            .where(TeamMembership.team_account_id == account.id, User.active.is_(True))
            .order_by(TeamMembership.id)
            .limit(1)
        )
    if user is None or not user.active or not user.email:
        return None
    return Recipient(user.email, user.name, user.id)


async def admins(session: AsyncSession, org_id: int) -> list[Recipient]:
    rows = await session.scalars(
        select(User)
        .where(User.organization_id == org_id, User.role == Role.ADMIN, User.active.is_(True))
        .order_by(User.id)
    )
    return [Recipient(u.email, u.name, u.id) for u in rows]


# --------------------------------------------------------------------------- rendering

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(kind: NotificationKind, context: dict[str, Any]) -> tuple[str, str, str]:
    """Subject, text and HTML of a message (the subject is the text template's
    ``subject`` block)."""
    text_template = _env.get_template(f"{kind.lower()}.txt")
    html_template = _env.get_template(f"{kind.lower()}.html")
    subject = "".join(text_template.blocks["subject"](text_template.new_context(context)))
    return " ".join(subject.split()), text_template.render(context), html_template.render(context)


def _day(day: date) -> str:
    return f"{day.day} {day:%B %Y}"


def _instant(instant: datetime, timezone: str) -> str:
    local = instant.astimezone(ZoneInfo(timezone))
    return f"{local.day} {local:%B %Y at %H:%M} ({timezone})"


async def _invoice_view(session: AsyncSession, invoice: Invoice) -> dict[str, Any]:
    fmt = lambda minor: money.format_amount(minor, invoice.currency)  # noqa: E731
    lines = [
        {"description": line.description, "quantity": line.quantity, "amount": fmt(line.total)}
        for line in await lines_of(session, invoice.id)
    ]
    return {
        "id": invoice.id,
        "number": invoice.number,
        "label": invoice.number or "your next invoice",
        "status": str(invoice.status),
        "pending": invoice.status == InvoiceStatus.PENDING,
        "due_date": _day(invoice.due_date),
        "lines": lines,
        "subtotal": fmt(invoice.subtotal),
        "tax": fmt(invoice.tax),
        "has_tax": invoice.tax != 0,
        "total": fmt(invoice.total),
        "paid": fmt(invoice.amount_paid + invoice.credit_applied),
        "balance": fmt(invoice.balance_due),
        "balance_due": invoice.balance_due,
        "document_url": None,
    }


@dataclass
class Draft:
    kind: NotificationKind
    recipient: Recipient
    event: Event
    context: dict[str, Any] = field(default_factory=dict)
    account_id: int | None = None
    invoice_id: int | None = None
    payment_id: int | None = None
    # The invoice a pay link would pay, when the message carries one.
    payable: Invoice | None = None


@dataclass
class _Derivation:
    session: AsyncSession
    org: Organization
    config: NotificationConfig
    now: datetime

    def base(self) -> dict[str, Any]:
        org = self.org
        return {
            "organization": org.name,
            "reply_to": org.email_reply_to or org.email_from or self.config.default_sender,
            "timezone": org.timezone,
        }

    async def for_account(
        self,
        kind: NotificationKind,
        event: Event,
        account_id: int | None,
        **context: Any,
    ) -> list[Draft]:
        if account_id is None or not kind_on(self.org, kind):
            return []
        account = await self.session.get(Account, account_id)
        if account is None or not account.active:
            return []
        if kind == NotificationKind.INVOICE_UPCOMING and not account.reminders:
            return []
        contact = await billing_contact(self.session, account)
        if contact is None:
            return []
        context = {**self.base(), "account": account.name, "name": contact.name, **context}
        return [Draft(kind, contact, event, context, account_id=account.id)]

    async def for_admins(self, kind: NotificationKind, event: Event, **context: Any) -> list[Draft]:
        if not kind_on(self.org, kind):
            return []
        return [
            Draft(kind, admin, event, {**self.base(), "name": admin.name, **context})
            for admin in await admins(self.session, self.org.id)
        ]

    async def invoice_drafts(
        self, kind: NotificationKind, event: Event, invoice_id: int | None, **context: Any
    ) -> list[Draft]:
        invoice = await self.session.get(Invoice, invoice_id) if invoice_id else None
        if invoice is None:
            return []
        view = await _invoice_view(self.session, invoice)
        document = self.config.invoice_document_path
        if (
            document is not None
            and invoice.number
            and invoice.document_type == DocumentType.INVOICE
        ):
            view["document_url"] = f"{self.config.public_url.rstrip('/')}{document(invoice.id)}"
        drafts = await self.for_account(kind, event, invoice.account_id, invoice=view, **context)
        for draft in drafts:
            draft.invoice_id = invoice.id
            if (
                kind in _PAY_LINK_KINDS
                and invoice.status in OUTSTANDING_STATUSES
                and invoice.document_type == DocumentType.INVOICE
                and invoice.balance_due > 0
            ):
                draft.payable = invoice
        return drafts

    async def from_event(self, event: Event) -> list[Draft]:
        t, p = event.type, event.payload or {}
        if t == EventType.INVOICE_FINALIZED:
            if p.get("document_type") != DocumentType.INVOICE or int(p.get("total") or 0) <= 0:
                return []
            return await self.invoice_drafts(
                NotificationKind.INVOICE_FINALIZED, event, event.invoice_id
            )
        if t == EventType.INVOICE_SENT:
            return await self.invoice_drafts(NotificationKind.INVOICE_SENT, event, event.invoice_id)
        if t == EventType.CREDIT_NOTE_CREATED:
            if p.get("origin") == REFUND_ORIGIN:
                return []  # the refund's own e-mail tells of it
            note = await self.session.get(Invoice, event.credit_note_id or event.invoice_id)
            if note is None:
                return []
            drafts = await self.for_account(
                NotificationKind.CREDIT_NOTE_ISSUED, event, note.account_id,
                number=note.number, credit=money.format_amount(-note.total, note.currency),
                available=money.format_amount(note.credit_remaining, note.currency),
                issued=_day(note.issue_date or local_date(event.created_at, self.org.timezone)),
            )  # fmt: skip
            for draft in drafts:
                draft.invoice_id = note.id
            return drafts
        if t in (EventType.PAYMENT_STATUS_CHANGED, EventType.PAYMENT_CREATED):
            return await self.payment_drafts(event, str(p.get("status")))
        if t in (EventType.REFUND_STATUS_CHANGED, EventType.REFUND_CREATED):
            if p.get("status") != RefundStatus.SUCCEEDED or event.refund_id is None:
                return []
            refund = await self.session.get(Refund, event.refund_id)
            if refund is None:
                return []
            drafts = await self.for_account(
                NotificationKind.REFUND_ISSUED, event, refund.account_id,
                amount=money.format_amount(refund.amount, refund.currency),
                method=str(refund.method).replace("_", " ").lower(),
                reason=refund.reason,
            )  # fmt: skip
            for draft in drafts:
                draft.payment_id = refund.payment_id
            return drafts
        return []

    async def payment_drafts(self, event: Event, status: str) -> list[Draft]:
        if status not in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED):
            return []
        payment = await self.session.get(Payment, event.payment_id) if event.payment_id else None
        if payment is None:
            return []
        invoice = await self.session.get(Invoice, payment.invoice_id)
        if invoice is None:
            return []
        amount = money.format_amount(payment.amount, payment.currency)
        drafts: list[Draft] = []
        if status == PaymentStatus.SUCCEEDED:
            paid_on = payment.received_on or local_date(event.created_at, self.org.timezone)
            drafts = await self.invoice_drafts(
                NotificationKind.PAYMENT_SUCCEEDED, event, invoice.id,
                amount=amount, method=str(payment.method).replace("_", " ").lower(),
                paid_on=_day(paid_on),
            )  # fmt: skip
        else:
            words = decline_words(payment.error_code, payment.error_message)
            automatic = payment.type == PaymentType.AUTOMATIC
            retry = automatic and payment.attempt < MAX_AUTOPAY_ATTEMPTS
            retry_at = event.created_at + timedelta(hours=self.org.autopay_retry_hours)
            kind = (
                NotificationKind.AUTOPAY_RETRY_SCHEDULED
                if retry
                else NotificationKind.PAYMENT_FAILED
            )
            common = {
                "amount": amount, "reason": words.reason, "what_to_do": words.what_to_do,
                "automatic": automatic, "retry_at": _instant(retry_at, self.org.timezone),
            }  # fmt: skip
            drafts = await self.invoice_drafts(kind, event, invoice.id, **common)
            if automatic:
                account = await self.session.get(Account, payment.account_id)
                view = await _invoice_view(self.session, invoice)
                admin_drafts = await self.for_admins(
                    NotificationKind.ADMIN_AUTOPAY_FAILED, event, invoice=view, retry=retry,
                    account=account.name if account else "", error_code=payment.error_code or "",
                    **common,
                )  # fmt: skip
                for draft in admin_drafts:
                    draft.account_id, draft.invoice_id = payment.account_id, invoice.id
                drafts += admin_drafts
        for draft in drafts:
            draft.payment_id = payment.id
        return drafts


# --------------------------------------------------------------------------- writing rows


def _insert(session: AsyncSession) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(Notification)


async def _write(
    session: AsyncSession, drafts: Sequence[Draft], config: NotificationConfig, secret: str,
    now: datetime,
) -> int:  # fmt: skip
    """Insert each draft unless its (event, recipient, kind) exists; render it with its
    pay link once its row id is known. Returns how many rows were new."""
    made = 0
    for draft in drafts:
        expires = now + timedelta(days=config.pay_link_days) if draft.payable else None
        statement = (
            _insert(session)
            .values(
                organization_id=draft.event.organization_id,
                event_id=draft.event.id,
                kind=str(draft.kind),
                recipient=draft.recipient.email[:_EMAIL_MAX],
                recipient_user_id=draft.recipient.user_id,
                account_id=draft.account_id,
                invoice_id=draft.invoice_id,
                payment_id=draft.payment_id,
                subject="",
                body_text="",
                body_html="",
                status=NotificationStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                pay_link_expires_at=expires,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["event_id", "recipient", "kind"])
            .returning(Notification.id)
        )
        new_id = await session.scalar(statement)
        if new_id is None:
            continue  # made before: by an earlier try, or by another worker
        context = dict(draft.context)
        context["pay_url"] = (
            f"{config.public_url.rstrip('/')}/pay/{sign(secret, new_id, expires)}"
            if expires is not None
            else None
        )
        context["pay_link_expires"] = _day(expires.date()) if expires is not None else None
        subject, text, html = render(draft.kind, context)
        await session.execute(
            update(Notification)
            .where(Notification.id == new_id)
            .values(subject=subject[:300], body_text=text, body_html=html)
        )
        made += 1
    return made


async def _cursor(session: AsyncSession, now: datetime) -> NotificationCursor | None:
    """The cursor row, locked (None when another worker holds it)."""
    await session.execute(
        _cursor_insert(session)
        .values(name=CURSOR, last_event_id=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return await session.scalar(
        select(NotificationCursor)
        .where(NotificationCursor.name == CURSOR)
        .with_for_update(skip_locked=True)
    )


def _cursor_insert(session: AsyncSession) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(NotificationCursor)


async def derive_from_log(
    sessionmaker: Sessionmaker, config: NotificationConfig, secret: str, clock: Clock
) -> tuple[int, int]:
    """One batch of the log after the cursor into notification rows, and the cursor
    moved past it, in one transaction. Returns how many events were read and how
    many rows were new; (0, 0) when another worker holds the cursor."""
    async with sessionmaker() as session, session.begin():
        cursor = await _cursor(session, clock.now())
        if cursor is None:
            return 0, 0
        batch = list(
            await session.scalars(
                select(Event)
                .where(Event.id > cursor.last_event_id)
                .order_by(Event.id)
                .limit(config.batch_size)
            )
        )
        if not batch:
            return 0, 0
        orgs: dict[int, Organization] = {}
        made = 0
        for event in batch:
            org = orgs.get(event.organization_id) or await session.get(
                Organization, event.organization_id
            )
            if org is None:
                continue
            orgs[org.id] = org
            now = organization_now(clock, org)
            drafts = await _Derivation(session, org, config, now).from_event(event)
            made += await _write(session, drafts, config, secret, now)
        cursor.last_event_id = batch[-1].id
        cursor.updated_at = clock.now()
        return len(batch), made


async def derive_scheduled(
    sessionmaker: Sessionmaker, config: NotificationConfig, secret: str, clock: Clock
) -> int:
    """Reminders due on each organization's local today, and yesterday's overdue
    digests; one transaction per organization."""
    async with sessionmaker() as session:
        org_ids = list(await session.scalars(select(Organization.id).order_by(Organization.id)))
    made = 0
    for org_id in org_ids:
        made += await to_the_end(_scheduled_for(sessionmaker, org_id, config, secret, clock))
    return made


async def _scheduled_for(
    sessionmaker: Sessionmaker, org_id: int, config: NotificationConfig, secret: str,
    clock: Clock,
) -> int:  # fmt: skip
    made = 0
    async with sessionmaker() as session, session.begin():
        org = await session.get(Organization, org_id)
        if org is None:
            return 0
        now = organization_now(clock, org)
        derivation = _Derivation(session, org, config, now)
        today = local_today(org, now)
        if kind_on(org, NotificationKind.INVOICE_UPCOMING):
            made += await _reminders(derivation, today, secret)
        if kind_on(org, NotificationKind.ADMIN_OVERDUE_DIGEST):
            made += await _digests(derivation, today, secret)
    return made


async def _reminders(d: _Derivation, today: date, secret: str) -> int:
    """Invoices (pending or finalized) due within ``reminder_days`` and not yet due,
    with a balance, that have no reminder yet: on the day the lead time starts, or
    later that week if the worker was down then."""
    org, session = d.org, d.session
    already = (
        select(Notification.id)
        .where(
            Notification.invoice_id == Invoice.id,
            Notification.kind == NotificationKind.INVOICE_UPCOMING,
        )
        .exists()
    )
    candidates = await session.scalars(
        select(Invoice)
        .where(
            Invoice.organization_id == org.id,
            Invoice.status.in_((InvoiceStatus.PENDING, InvoiceStatus.UPCOMING)),
            Invoice.due_date > today,
            Invoice.due_date <= today + timedelta(days=org.reminder_days),
            Invoice.total > 0,
            ~already,
        )
        .order_by(Invoice.id)
        .limit(d.config.batch_size)
    )
    made = 0
    for invoice in list(candidates):
        if invoice.balance_due <= 0:
            continue
        first = await session.scalar(
            select(Event).where(Event.invoice_id == invoice.id).order_by(Event.id).limit(1)
        )
        if first is None:
            continue  # no notification without its event
        account = await session.get(Account, invoice.account_id)
        autopay = bool(account and account.autopay and account.default_payment_method_id)
        drafts = await d.invoice_drafts(
            NotificationKind.INVOICE_UPCOMING, first, invoice.id, autopay=autopay
        )
        made += await _write(session, drafts, d.config, secret, d.now)
    return made


async def _digests(d: _Derivation, today: date, secret: str) -> int:
    """Each of the last few complete local days with invoices that turned overdue:
    one digest per admin, keyed on that day's first "became overdue" event."""
    org, session = d.org, d.session
    made = 0
    for back in range(_DIGEST_LOOKBACK_DAYS, 0, -1):
        day = today - timedelta(days=back)
        start, end = start_of_day(day, org.timezone), start_of_day(day + timedelta(1), org.timezone)
        overdue = list(
            await session.scalars(
                select(Event)
                .where(
                    Event.organization_id == org.id,
                    Event.type == EventType.INVOICE_BECAME_OVERDUE,
                    Event.created_at >= start,
                    Event.created_at < end,
                )
                .order_by(Event.id)
            )
        )
        if not overdue:
            continue
        key = overdue[0]
        exists = await session.scalar(
            select(func.count(Notification.id)).where(
                Notification.event_id == key.id,
                Notification.kind == NotificationKind.ADMIN_OVERDUE_DIGEST,
            )
        )
        if exists:
            continue
        items: list[dict[str, Any]] = []
        owed = 0
        for event in overdue:
            invoice = await session.get(Invoice, event.invoice_id) if event.invoice_id else None
            if invoice is None:
                continue
            account = await session.get(Account, invoice.account_id)
            owed += invoice.balance_due
            items.append(
                {
                    "number": invoice.number or f"invoice {invoice.id}",
                    "account": account.name if account else "",
                    "due_date": _day(invoice.due_date),
                    "balance": money.format_amount(invoice.balance_due, invoice.currency),
                    "status": str(invoice.status),
                }
            )
        drafts = await d.for_admins(
            NotificationKind.ADMIN_OVERDUE_DIGEST, key, day=_day(day), items=items,
            total=money.format_amount(owed, org.currency),
        )  # fmt: skip
        made += await _write(session, drafts, d.config, secret, d.now)
    return made


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class DeliveryResult:
    sent: int = 0
    failed: int = 0
    recorded: int = 0


def backoff(config: NotificationConfig, attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failed try: base × 2^(n-1), capped."""
    seconds = min(config.backoff_seconds * 2 ** max(attempts - 1, 0), config.max_backoff_seconds)
    return timedelta(seconds=seconds)


async def deliver_due(
    sessionmaker: Sessionmaker, mailer: Mailer, config: NotificationConfig, now: datetime
) -> DeliveryResult:
    """Send what is due (PENDING whose time has come, SENDING whose lease ran out)."""
    claimed = await to_the_end(_claim(sessionmaker, mailer, config, now))
    if not mailer.enabled:
        return DeliveryResult(recorded=len(claimed))
    sent = failed = 0
    for note_id, attempts, mail in claimed:
        # Sending and recording the outcome run to the end even when the worker is
        # cancelled meanwhile: a message the server accepted is then always marked
        # SENT, never sent again after the lease.
        ok = await to_the_end(
            _send_and_record(sessionmaker, mailer, config, note_id, attempts, mail, now)
        )
        sent, failed = sent + ok, failed + (not ok)
    return DeliveryResult(sent=sent, failed=failed)


async def _claim(
    sessionmaker: Sessionmaker, mailer: Mailer, config: NotificationConfig, now: datetime
) -> list[tuple[int, int, OutgoingMail]]:
    """Due rows become SENDING with a lease (or NOT_SENT while mail is off)."""
    due = and_(
        Notification.status.in_((NotificationStatus.PENDING, NotificationStatus.SENDING)),
        Notification.next_attempt_at <= now,
    )
    async with sessionmaker() as session, session.begin():
        claimed = list(
            await session.scalars(
                select(Notification)
                .where(due)
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(config.batch_size)
                .with_for_update(skip_locked=True)
            )
        )
        if not mailer.enabled:
            for note in claimed:
                note.status = NotificationStatus.NOT_SENT
                note.next_attempt_at = None
                note.last_error = "Not sent: no SMTP server is configured (DESKBILL_SMTP_URL)."
            return [(note.id, 0, await _mail(session, note, config)) for note in claimed]
        for note in claimed:
            note.status = NotificationStatus.SENDING
            note.attempts += 1
            note.next_attempt_at = now + timedelta(seconds=config.lease_seconds)
        return [(note.id, note.attempts, await _mail(session, note, config)) for note in claimed]


async def _send_and_record(
    sessionmaker: Sessionmaker, mailer: Mailer, config: NotificationConfig, note_id: int,
    attempts: int, mail: OutgoingMail, now: datetime,
) -> bool:  # fmt: skip
    try:
        await mailer.send(mail)
    except MailDeliveryError as exc:
        gave_up = attempts >= config.max_attempts
        values: dict[str, Any] = {
            "status": NotificationStatus.FAILED if gave_up else NotificationStatus.PENDING,
            "next_attempt_at": None if gave_up else now + backoff(config, attempts),
            "last_error": str(exc)[:2000],
        }
    else:
        values = {
            "status": NotificationStatus.SENT,
            "next_attempt_at": None,
            "sent_at": now,
            "last_error": None,
        }
    async with sessionmaker() as session, session.begin():
        # Only the claim this worker holds: a row reclaimed after its lease ran out
        # belongs to the newer attempt.
        await session.execute(
            update(Notification)
            .where(
                Notification.id == note_id,
                Notification.status == NotificationStatus.SENDING,
                Notification.attempts == attempts,
            )
            .values(**values)
        )
    return values["status"] == NotificationStatus.SENT


async def _mail(
    session: AsyncSession, note: Notification, config: NotificationConfig
) -> OutgoingMail:
    org = await session.get(Organization, note.organization_id)
    assert org is not None
    domain = (org.email_from or config.default_sender).rpartition("@")[2] or "localhost"
    return OutgoingMail(
        sender=org.email_from or config.default_sender,
        sender_name=org.name,
        reply_to=org.email_reply_to,
        to=note.recipient,
        subject=note.subject,
        text=note.body_text,
        html=note.body_html,
        message_id=f"<deskbill-notification-{note.id}@{domain}>",
        date=note.created_at.astimezone(UTC),
    )


async def notify_once(
    sessionmaker: Sessionmaker, mailer: Mailer, config: NotificationConfig, secret: str,
    clock: Clock,
) -> DeliveryResult:  # fmt: skip
    """One round of the worker: the log (until caught up), the schedule, delivery."""
    while True:
        read, _made = await to_the_end(derive_from_log(sessionmaker, config, secret, clock))
        if read < config.batch_size:
            break
    await derive_scheduled(sessionmaker, config, secret, clock)
    # Mail leaves in real time: delivery and its backoff go by the process clock.
    return await deliver_due(sessionmaker, mailer, config, clock.now())
