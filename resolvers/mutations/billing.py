"""Mutations of the billing engine (rules §3, §4, §8, §9): policy, accounts, plans,
bookings and charges, manual invoices and lines, finalize, void, the billing run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import strawberry
from strawberry.types import Info

from models import AccountKind, Booking, Invoice, Role
from resolvers import mapping
from resolvers.context import Viewer
from resolvers.mutations.common import (
    Work,
    amount,
    optional_amount,
    reading,
    tax_rate,
    transaction,
)
from resolvers.permissions import context, pk_of, require_admin, require_writer
from schema import inputs as i
from schema import types as t
from services import accounts, billing, bookings, invoices, plans, policy, test_clocks
from services.clock import refuse_future
from services.errors import ValidationError


def _instant(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise ValidationError(f"{field} needs a timezone offset, e.g. 2026-09-01T09:00:00Z.")
    return value.astimezone(UTC)


@strawberry.type
class BillingMutations:
    @strawberry.mutation(description="Change the invoice policy (billingDay locks once invoiced).")
    async def update_invoice_policy(
        self, info: Info, input: i.InvoicePolicyInput
    ) -> t.InvoicePolicy:
        who = require_admin(info)
        changes: dict[str, Any] = {
            key: value
            for key, value in vars(input).items()
            if value is not None and key != "default_tax_rate"
        }
        if input.additional_charges is not None:
            changes["additional_charges"] = input.additional_charges.value
        if input.default_tax_rate is not None:
            changes["default_tax_rate_ppm"] = tax_rate(input.default_tax_rate)
        async with transaction(info) as w:
            await policy.update_policy(w.session, w.org, w.now, actor_user_id=w.actor, **changes)
        loaders = context(info).loaders
        result: t.InvoicePolicy = await loaders.invoice_policy.load(who.organization_id)
        return result

    @strawberry.mutation
    async def create_user(self, info: Info, input: i.CreateUserInput) -> i.CreateUserPayload:
        require_admin(info)
        async with transaction(info) as w:
            user = await accounts.create_user(
                w.session, w.org, email=input.email, name=input.name,
                role=Role(input.role.value), now=w.now, actor_user_id=w.actor,
                external_subject=input.external_subject,
            )  # fmt: skip
            account = None
            if input.with_account:
                account = await accounts.create_account(
                    w.session, w.org, kind=AccountKind.USER, user=user, now=w.now,
                    actor_user_id=w.actor,
                )  # fmt: skip
        return i.CreateUserPayload(
            user=mapping.user(user), account=mapping.account(account) if account else None
        )

    @strawberry.mutation
    async def create_account(self, info: Info, input: i.CreateAccountInput) -> t.Account:
        require_admin(info)
        async with transaction(info) as w:
            owner = None if input.user_id is None else await w.user(input.user_id)
            account = await accounts.create_account(
                w.session, w.org, kind=AccountKind(input.kind.value), name=input.name,
                email=input.email, user=owner, autopay=input.autopay, now=w.now,
                actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.account(account)

    @strawberry.mutation
    async def update_account(
        self, info: Info, account_id: strawberry.ID, input: i.UpdateAccountInput
    ) -> t.Account:
        require_admin(info)
        async with transaction(info) as w:
            account = await w.account(account_id)
            await accounts.update_account(
                w.session, w.org, account, w.now, name=input.name, email=input.email,
                active=input.active, actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.account(account)

    @strawberry.mutation
    async def add_team_member(
        self, info: Info, team_id: strawberry.ID, user_id: strawberry.ID
    ) -> t.Account:
        return await _membership(info, team_id, user_id, add=True)

    @strawberry.mutation
    async def remove_team_member(
        self, info: Info, team_id: strawberry.ID, user_id: strawberry.ID
    ) -> t.Account:
        return await _membership(info, team_id, user_id, add=False)

    @strawberry.mutation(description="Turn auto-pay on or off (members: their own accounts).")
    async def set_autopay(self, info: Info, account_id: strawberry.ID, enabled: bool) -> t.Account:
        require_writer(info)
        async with transaction(info) as w:
            account = await w.account(account_id)
            await accounts.set_autopay(
                w.session, w.org, account, enabled, w.now, actor_user_id=w.actor
            )
        return mapping.account(account)

    @strawberry.mutation
    async def create_plan_template(self, info: Info, input: i.PlanTemplateInput) -> t.PlanTemplate:
        who = require_admin(info)
        price = amount(input.price, who, "price")
        setup_fee = amount(input.setup_fee, who, "setupFee")
        deposit = amount(input.deposit, who, "deposit")
        async with transaction(info) as w:
            template = await plans.create_plan_template(
                w.session, w.org, name=input.name, price=price, interval=input.interval,
                now=w.now, setup_fee=setup_fee, deposit=deposit,
                tax_rate_ppm=tax_rate(input.tax_rate), actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.plan_template(template, who.currency)

    @strawberry.mutation(description="Put an account on a plan; its first invoice is made now.")
    async def subscribe_to_plan(self, info: Info, input: i.SubscribeInput) -> t.PlanSubscription:
        who = require_admin(info)
        async with transaction(info) as w:
            account = await w.account(input.account_id)
            template = await w.plan_template(input.plan_template_id)
            subscription = await plans.subscribe(
                w.session, w.org, account, template, input.start_date, w.now,
                end_date=input.end_date, actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.plan_subscription(subscription, who.currency)

    @strawberry.mutation(description="Move a plan's end date; earlier ends may credit paid days.")
    async def change_plan_end_date(self, info: Info, input: i.PlanEndInput) -> t.PlanSubscription:
        who = require_admin(info)
        deposit_return = amount(input.deposit_return, who, "depositReturn")
        async with transaction(info) as w:
            subscription = await w.plan_subscription(input.plan_subscription_id)
            change = await plans.update_end_date(
                w.session, w.org, subscription, input.end_date, w.now,
                credit_unused_periods=input.credit_unused_periods,
                deposit_return=deposit_return, actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.plan_subscription(change.subscription, who.currency)

    @strawberry.mutation(description="Cancel a plan (today, or after a given last day).")
    async def cancel_plan(self, info: Info, input: i.PlanEndInput) -> t.PlanSubscription:
        who = require_admin(info)
        deposit_return = amount(input.deposit_return, who, "depositReturn")
        async with transaction(info) as w:
            subscription = await w.plan_subscription(input.plan_subscription_id)
            change = await plans.cancel(
                w.session, w.org, subscription, w.now, last_day=input.end_date,
                credit_unused_periods=input.credit_unused_periods,
                deposit_return=deposit_return, actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.plan_subscription(change.subscription, who.currency)

    @strawberry.mutation(description="Book a resource; members may book for their own accounts.")
    async def create_booking(self, info: Info, input: i.CreateBookingInput) -> t.Booking:
        who = require_writer(info)
        starts_at = _instant(input.starts_at, "startsAt")
        ends_at = _instant(input.ends_at, "endsAt")
        price = optional_amount(input.price, who, "price")
        hourly_rate = optional_amount(input.hourly_rate, who, "hourlyRate")
        async with transaction(info) as w:
            account = await w.account(input.account_id)
            booking = await bookings.create_booking(
                w.session, w.org, account, resource_name=input.resource_name,
                starts_at=starts_at, ends_at=ends_at, now=w.now, price=price,
                hourly_rate=hourly_rate, tax_rate_ppm=tax_rate(input.tax_rate),
                booked_by_user_id=w.actor, actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.booking(booking, who.currency)

    @strawberry.mutation(description="Shorten a booking; a paid one earns credit for the rest.")
    async def shorten_booking(
        self,
        info: Info,
        booking_id: strawberry.ID,
        ends_at: datetime,
        create_credit: bool = True,
    ) -> i.BookingChangePayload:
        new_end = _instant(ends_at, "endsAt")

        async def change(w: Work, booking: Booking, create: bool) -> bookings.BookingChange:
            return await bookings.shorten_booking(
                w.session, w.org, booking, new_end, w.now, create_credit=create,
                actor_user_id=w.actor,
            )  # fmt: skip

        return await _booking_change(info, booking_id, create_credit, change)

    @strawberry.mutation(
        description="Cancel a booking. Members always get credit for a paid booking; admins "
        "choose with createCredit (default true)."
    )
    async def cancel_booking(
        self, info: Info, booking_id: strawberry.ID, create_credit: bool = True
    ) -> i.BookingChangePayload:
        async def change(w: Work, booking: Booking, create: bool) -> bookings.BookingChange:
            return await bookings.cancel_booking(
                w.session, w.org, booking, w.now, create_credit=create, actor_user_id=w.actor
            )

        return await _booking_change(info, booking_id, create_credit, change)

    @strawberry.mutation(description="Check an account in for a day pass at the given rate.")
    async def check_in_day_pass(self, info: Info, input: i.DayPassInput) -> t.LineItem | None:
        who = require_admin(info)
        price = amount(input.price, who, "price")
        async with transaction(info) as w:
            account = await w.account(input.account_id)
            line = await bookings.check_in_day_pass(
                w.session, w.org, account, price=price, now=w.now,
                description=input.description, tax_rate_ppm=tax_rate(input.tax_rate),
                actor_user_id=w.actor,
            )  # fmt: skip
        return None if line is None else mapping.line(line, who.currency)

    @strawberry.mutation(description="A one-time sale, placed per the additional-charges policy.")
    async def add_one_time_charge(self, info: Info, input: i.ChargeInput) -> t.LineItem:
        who = require_admin(info)
        unit_price = amount(input.unit_price, who, "unitPrice")
        async with transaction(info) as w:
            account = await w.account(input.account_id)
            line = await bookings.add_one_time_charge(
                w.session, w.org, account, description=input.description,
                unit_price=unit_price, now=w.now, quantity=input.quantity,
                tax_rate_ppm=tax_rate(input.tax_rate), actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.line(line, who.currency)

    @strawberry.mutation(description="A manual invoice with custom charge and credit lines.")
    async def create_manual_invoice(self, info: Info, input: i.ManualInvoiceInput) -> t.Invoice:
        who = require_admin(info)
        lines = [_manual_line(line, who, n) for n, line in enumerate(input.lines)]
        async with transaction(info) as w:
            account = await w.account(input.account_id)
            invoice = await invoices.create_manual_invoice(
                w.session, w.org, account, lines, w.now, due_date=input.due_date,
                finalize_now=input.finalize_now, apply_credit=input.apply_credit,
                actor_user_id=w.actor,
            )  # fmt: skip
        return mapping.invoice(invoice)

    @strawberry.mutation(description="Add a charge (or, negative, a credit) to a pending invoice.")
    async def add_invoice_line(self, info: Info, input: i.AddLineInput) -> t.Invoice:
        who = require_admin(info)
        pk = pk_of(input.invoice_id, "Invoice", field="invoiceId")
        unit_price = amount(input.unit_price, who, "unitPrice")
        spec = invoices.LineSpec(
            description=input.description, unit_price=unit_price, quantity=input.quantity,
            kind=invoices.LineKind.CREDIT if unit_price < 0 else invoices.LineKind.CHARGE,
            tax_rate_ppm=tax_rate(input.tax_rate),
        )  # fmt: skip
        async with transaction(info) as w:
            invoice = await w.invoice(pk)
            await invoices.add_line(w.session, w.org, invoice, spec, w.now, actor_user_id=w.actor)
        return mapping.invoice(invoice)

    @strawberry.mutation(
        description="Remove a line: from a pending invoice it goes; from an unpaid finalized "
        "one it moves onto a new VOID invoice; paid, processing and void invoices refuse."
    )
    async def remove_line_item(
        self, info: Info, line_item_id: strawberry.ID
    ) -> i.RemoveLineItemPayload:
        require_admin(info)
        async with transaction(info) as w:
            line = await w.line(line_item_id)
            removed = await invoices.remove_line(
                w.session, w.org, line, w.now, actor_user_id=w.actor
            )
        trail = removed.trail_invoice
        return i.RemoveLineItemPayload(
            invoice=mapping.invoice(removed.invoice),
            trail_invoice=mapping.invoice(trail) if trail is not None else None,
        )

    @strawberry.mutation(
        description="Finalize now ('charge early'): number it, freeze it, due today; "
        "applyCredit uses the account's available credit."
    )
    async def finalize_invoice(
        self, info: Info, invoice_id: strawberry.ID, apply_credit: bool = True
    ) -> t.Invoice:
        async def finalize(w: Work, invoice: Invoice) -> None:
            await invoices.finalize(
                w.session, w.org, invoice, w.now, manual=True, apply_credit=apply_credit,
                actor_user_id=w.actor,
            )  # fmt: skip

        return await _invoice_action(info, invoice_id, finalize, "Invoice")

    @strawberry.mutation(description="Void an invoice (or credit note); it keeps its number.")
    async def void_invoice(self, info: Info, invoice_id: strawberry.ID) -> t.Invoice:
        async def void(w: Work, invoice: Invoice) -> None:
            await invoices.void(w.session, w.org, invoice, w.now, actor_user_id=w.actor)

        return await _invoice_action(info, invoice_id, void, "Invoice", "CreditNote")

    @strawberry.mutation(description="Un-void: back to the status its dates and balance give.")
    async def unvoid_invoice(self, info: Info, invoice_id: strawberry.ID) -> t.Invoice:
        async def unvoid(w: Work, invoice: Invoice) -> None:
            await invoices.unvoid(w.session, w.org, invoice, w.now, actor_user_id=w.actor)

        return await _invoice_action(info, invoice_id, unvoid, "Invoice", "CreditNote")

    @strawberry.mutation(
        description="Run the billing clock for an instant (default: the organization's "
        "now): finalize what is due, move statuses, add plan periods. Idempotent. An "
        "instant in the past is a catch-up; a live organization refuses one more than 5 "
        "minutes after now, a sandbox one after its test clock (VALIDATION)."
    )
    async def run_billing(self, info: Info, as_of: datetime | None = None) -> i.BillingRun:
        who = require_admin(info)
        ctx = context(info)
        async with reading(info) as w:
            now, sandbox = w.now, w.org.sandbox
        instant = (
            now if as_of is None else refuse_future(_instant(as_of, "asOf"), now, sandbox=sandbox)
        )
        result = await billing.run_billing(ctx.sessionmaker, who.organization_id, instant)
        await ctx.announce_latest(who.organization_id)
        ctx.reset_loaders()
        return i.BillingRun(
            as_of=result.as_of,
            accounts_processed=result.accounts_processed,
            accounts_skipped=result.accounts_skipped,
            invoices_finalized=result.invoices_finalized,
            status_changes=result.status_changes,
            plan_periods_added=result.plan_periods_added,
            plans_ended=result.plans_ended,
        )

    @strawberry.mutation(
        description="Move a sandbox organization's test clock forward to `to` (at most "
        "731 days per call), running billing at every boundary on the way, in order: "
        "finalizations, due and overdue dates, auto-pay retries, billing dates. Each step "
        "commits on its own. A live organization refuses (NOT_A_SANDBOX); `to` not later "
        "than the clock is refused (VALIDATION)."
    )
    async def advance_test_clock(self, info: Info, to: datetime) -> i.TestClockAdvance:
        who = require_admin(info)
        ctx = context(info)
        try:
            report = await test_clocks.advance_test_clock(
                ctx.sessionmaker, who.organization_id, to, actor_user_id=who.user_id
            )
        finally:
            await ctx.announce_latest(who.organization_id)
            ctx.reset_loaders()
        return i.TestClockAdvance(
            previous=report.previous,
            now=report.now,
            invoices_finalized=report.invoices_finalized,
            status_changes=report.status_changes,
            payments_attempted=report.payments_attempted,
            stopped_short=report.stopped_short,
            steps=[
                i.TestClockStep(
                    at=step.at,
                    invoices_finalized=step.invoices_finalized,
                    status_changes=step.status_changes,
                    payments_attempted=step.payments_attempted,
                    plan_periods_added=step.plan_periods_added,
                )
                for step in report.steps
            ],
        )


InvoiceAction = Callable[[Work, Invoice], Awaitable[None]]
BookingAction = Callable[[Work, Booking, bool], Awaitable[bookings.BookingChange]]


async def _invoice_action(
    info: Info, invoice_id: str, action: InvoiceAction, *types: str
) -> t.Invoice:
    """Admin, one invoice, one engine call in one transaction, the invoice back."""
    require_admin(info)
    pk = pk_of(invoice_id, *types, field="invoiceId")
    async with transaction(info) as w:
        invoice = await w.invoice(pk)
        await action(w, invoice)
    return mapping.invoice(invoice)


async def _membership(info: Info, team_id: str, user_id: str, *, add: bool) -> t.Account:
    require_admin(info)
    change = accounts.add_team_member if add else accounts.remove_team_member
    async with transaction(info) as w:
        team = await w.account(team_id, "teamId")
        user = await w.user(user_id)
        await change(w.session, w.org, team, user, w.now, actor_user_id=w.actor)
    return mapping.account(team)


async def _booking_change(
    info: Info, booking_id: str, create_credit: bool, change: BookingAction
) -> i.BookingChangePayload:
    who = require_writer(info)
    # rules §5.2: a member's own cancellation always credits a paid booking.
    create = True if who.role == Role.MEMBER else create_credit
    async with transaction(info) as w:
        booking = await w.booking(booking_id)
        result = await change(w, booking, create)
    credit = result.credit_line
    return i.BookingChangePayload(
        booking=mapping.booking(result.booking, who.currency),
        adjustment=str(result.adjustment),
        credit_line=mapping.line(credit, who.currency) if credit is not None else None,
    )


def _manual_line(
    line: i.ManualLineInput, who: Viewer, n: int
) -> invoices.ManualCharge | invoices.ManualCredit:
    field = f"lines[{n}]"
    if (line.unit_price is None) == (line.credit_amount is None):
        raise ValidationError(f"{field} needs exactly one of unitPrice (charge) or creditAmount.")
    if line.credit_amount is not None:
        return invoices.ManualCredit(
            description=line.description,
            amount=amount(line.credit_amount, who, f"{field}.creditAmount"),
            tax_rate_ppm=tax_rate(line.tax_rate),
        )
    assert line.unit_price is not None
    return invoices.ManualCharge(
        description=line.description,
        unit_price=amount(line.unit_price, who, f"{field}.unitPrice"),
        quantity=line.quantity,
        tax_rate_ppm=tax_rate(line.tax_rate),
    )
