"""Organizations and the invoice policy (rules §3)."""

from __future__ import annotations

import pytest

from models import AdditionalChargesPolicy, InvoiceStatus
from services import invoices, policy
from services.clock import FixedClock
from services.errors import ConflictError, InvalidStateError, ValidationError
from services.events import EventType
from services.invoices import LineSpec
from tests.services.factories import (
    Sessions,
    at,
    d,
    event_types,
    fresh_org,
    invoices_of,
    make_account,
    make_org,
)


async def test_new_organizations_take_the_spec_defaults(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    assert (org.billing_day, org.timezone, org.additional_charges) == (
        1,
        "UTC",
        AdditionalChargesPolicy.NEXT_PENDING_INVOICE,
    )
    assert (org.due_today_grace_minutes, org.overdue_after_days) == (0, 7)
    assert org.auto_apply_credit and org.credit_unused_plan_periods and org.autopay_default
    assert not org.block_bookings_when_overdue
    assert (org.autopay_retry_hours, org.default_tax_rate_ppm) == (4, 0)
    assert (org.next_invoice_number, org.next_credit_note_number) == (1, 1)


async def test_organization_input_is_validated(db: Sessions, clock: FixedClock) -> None:
    await make_org(db, clock)
    async with db.begin() as session:
        with pytest.raises(ValidationError, match="three-letter"):
            await policy.create_organization(session, "X", "x", "dollars", clock.now())
        with pytest.raises(ValidationError, match="IANA"):
            await policy.create_organization(session, "X", "x", "USD", clock.now(), timezone="Mars")
        with pytest.raises(ValidationError, match="billing_day"):
            await policy.create_organization(session, "X", "x", "USD", clock.now(), billing_day=29)
        await policy.create_organization(session, "X", "taken", "USD", clock.now())
        with pytest.raises(ConflictError, match="taken"):
            await policy.create_organization(session, "Y", "taken", "EUR", clock.now())


async def test_update_policy_records_what_changed(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    async with db.begin() as session:
        updated = await policy.update_policy(
            session,
            org,
            clock.now(),
            billing_day=15,
            timezone="America/New_York",
            additional_charges="NEW_INVOICE_DUE_TODAY",
            overdue_after_days=0,
            block_bookings_when_overdue=True,
            default_tax_rate_ppm=82_500,
        )
    assert (updated.billing_day, updated.timezone) == (15, "America/New_York")
    assert updated.additional_charges == AdditionalChargesPolicy.NEW_INVOICE_DUE_TODAY
    assert updated.policy_updated_at == clock.now()
    assert (await event_types(db, organization_id=org.id)).count(EventType.POLICY_UPDATED) == 2
    with pytest.raises(ValidationError, match="overdue_after_days"):
        async with db.begin() as session:
            await policy.update_policy(session, org, clock.now(), overdue_after_days=-1)
    with pytest.raises(ValidationError, match="additionalCharges"):
        async with db.begin() as session:
            await policy.update_policy(session, org, clock.now(), additional_charges="LATER")


async def test_the_billing_day_is_locked_once_an_invoice_exists(
    db: Sessions, clock: FixedClock
) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        await invoices.place_additional_charge(
            session, org, account, LineSpec("Room", 1000), clock.now()
        )
    with pytest.raises(InvalidStateError, match="billing day cannot change"):
        async with db.begin() as session:
            await policy.update_policy(session, org, clock.now(), billing_day=10)
    async with db.begin() as session:
        # Setting it to what it already is changes nothing and is not refused.
        same = await policy.update_policy(session, org, clock.now(), billing_day=1)
    assert same.billing_day == 1


async def test_a_new_timezone_retimes_pending_invoices(db: Sessions, clock: FixedClock) -> None:
    org = await make_org(db, clock)
    account = await make_account(db, org, clock)
    async with db.begin() as session:
        await invoices.place_additional_charge(
            session, org, account, LineSpec("Room", 1000), clock.now()
        )
    async with db.begin() as session:
        await policy.update_policy(session, org, clock.now(), timezone="Asia/Tokyo")
    (pending,) = await invoices_of(db, account.id)
    assert pending.status == InvoiceStatus.PENDING
    # Midnight of Sep 1 in Tokyo is 15:00 UTC on Aug 31.
    assert pending.finalize_at == at(2026, 8, 31, 15)
    assert pending.due_date == d(2026, 9, 1)
    async with db() as session:
        assert (await fresh_org(session, org)).timezone == "Asia/Tokyo"
