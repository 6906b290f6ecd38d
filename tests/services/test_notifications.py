"""Notifications from the event log, through a real SMTP server (aiosmtpd): each
once per (event, recipient, kind) however often the worker runs, retried with
backoff while the server refuses, recorded but not sent while none is configured."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from models import Notification, NotificationStatus
from services import invoices, notifications
from services.clock import FixedClock
from services.invoices import ManualCharge
from services.mailer import OffMailer, mailer_from_url
from services.notifications import NotificationConfig, notify_once
from tests.services.factories import Sessions, make_account, make_org
from tests.smtp import Inbox, smtp_server

__all__ = ["smtp_server"]

CONFIG = NotificationConfig(public_url="https://billing.example.test", backoff_seconds=60)
SECRET = "s" * 40


async def _finalized_invoice(db: Sessions, clock: FixedClock) -> tuple[int, str]:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock, "Grace Hopper")
    async with db.begin() as session:
        invoice = await invoices.create_manual_invoice(
            session, org, account, [ManualCharge("Meeting room", 12_345, 2)], clock.now(),
            due_date=clock.now().date() + timedelta(days=10), finalize_now=True,
        )  # fmt: skip
    assert account.email is not None
    return invoice.id, account.email


async def _rows(db: Sessions) -> list[Notification]:
    async with db() as session:
        return list(await session.scalars(select(Notification).order_by(Notification.id)))


async def test_a_finalized_invoice_is_mailed_once_with_its_amounts_and_pay_link(
    db: Sessions, clock: FixedClock, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    mailer = mailer_from_url(url)
    _invoice_id, email = await _finalized_invoice(db, clock)

    for _ in range(3):  # the worker's rounds: the same events every time
        await notify_once(db, mailer, CONFIG, SECRET, clock)

    rows = await _rows(db)
    assert [(r.kind, r.recipient, r.status, r.attempts) for r in rows] == [
        ("INVOICE_FINALIZED", email, NotificationStatus.SENT, 1)
    ]
    [message] = inbox.to(email)
    assert message["Subject"] == "Hive Coworking: invoice INV-000001 ($246.90), due 25 August 2026"
    text = inbox.text(message)
    assert "Meeting room × 2: $246.90" in text
    assert "Balance due: $246.90" in text
    assert "https://billing.example.test/pay/" in text
    assert "/pay/" in inbox.html(message)
    assert message["Message-ID"] == f"<deskbill-notification-{rows[0].id}@localhost>"


async def test_a_refusing_server_is_retried_with_backoff_until_it_accepts(
    db: Sessions, clock: FixedClock, smtp_server: tuple[str, Inbox]
) -> None:
    url, inbox = smtp_server
    mailer = mailer_from_url(url)
    await _finalized_invoice(db, clock)
    inbox.refusing = True

    await notify_once(db, mailer, CONFIG, SECRET, clock)
    [row] = await _rows(db)
    assert (row.status, row.attempts) == (NotificationStatus.PENDING, 1)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=60)
    assert row.last_error is not None and "451" in row.last_error

    await notify_once(db, mailer, CONFIG, SECRET, clock)  # not due yet: no try
    assert (await _rows(db))[0].attempts == 1
    clock.advance(timedelta(seconds=60))
    await notify_once(db, mailer, CONFIG, SECRET, clock)
    [row] = await _rows(db)
    assert (row.attempts, row.next_attempt_at) == (2, clock.now() + timedelta(seconds=120))

    inbox.refusing = False
    clock.advance(timedelta(seconds=120))
    await notify_once(db, mailer, CONFIG, SECRET, clock)
    [row] = await _rows(db)
    assert (row.status, row.attempts, row.last_error) == (NotificationStatus.SENT, 3, None)
    assert len(inbox.messages) == 1


async def test_without_an_smtp_server_notifications_are_recorded_not_sent(
    db: Sessions, clock: FixedClock
) -> None:
    await _finalized_invoice(db, clock)
    await notify_once(db, OffMailer(), CONFIG, SECRET, clock)
    [row] = await _rows(db)
    assert row.status == NotificationStatus.NOT_SENT
    assert row.attempts == 0
    assert "INV-000001" in row.subject


async def test_a_crash_mid_derivation_leaves_nothing_half_made(
    db: Sessions, clock: FixedClock
) -> None:
    await _finalized_invoice(db, clock)
    await _finalized_invoice(db, clock)

    class Crash(Exception):
        pass

    real = notifications._write
    calls = 0

    async def crash_on_second(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Crash
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    notifications._write = crash_on_second  # type: ignore[assignment]
    try:
        try:
            await notifications.derive_from_log(db, CONFIG, SECRET, clock)
        except Crash:
            pass
    finally:
        notifications._write = real  # type: ignore[assignment]
    assert await _rows(db) == []  # the first write rolled back with the crash

    await notifications.derive_from_log(db, CONFIG, SECRET, clock)
    await notifications.derive_from_log(db, CONFIG, SECRET, clock)
    async with db() as session:
        count = await session.scalar(select(func.count(Notification.id)))
    assert count == 2
