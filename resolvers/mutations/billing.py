"""Mutations of the billing engine (rules §3, §4, §8, §9): policy, accounts, plans,
bookings and charges, manual invoices and lines, finalize, void, the billing run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import strawberry
from strawberry.types import Info

from models import AccountKind, Role
from resolvers import mapping
from resolvers.mutations.common import (
    account_pk,
    amount,
    optional_amount,
    organization,
    tax_rate,
)
from resolvers.permissions import (
    context,
    ensure_account_visible,
    pk_of,
    require_admin,
    require_writer,
    viewer,
)
from schema import inputs as i
from schema import types as t
from services import accounts, billing, bookings, invoices, plans, policy
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
        ctx = context(info)
        changes: dict[str, Any] = {
            key: value
            for key, value in vars(input).items()
            if value is not None and key != "default_tax_rate"
        }
        if input.additional_charges is not None:
            changes["additional_charges"] = input.additional_charges.value
        if input.default_tax_rate is not None:
            changes["default_tax_rate_ppm"] = tax_rate(input.default_tax_rate)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            await policy.update_policy(
                session, org, ctx.clock.now(), actor_user_id=who.user_id, **changes
            )
        result: t.InvoicePolicy = await ctx.loaders.invoice_policy.load(who.organization_id)
        return result

    @strawberry.mutation
    async def create_user(self, info: Info, input: i.CreateUserInput) -> i.CreateUserPayload:
        who = require_admin(info)
        ctx = context(info)
        now = ctx.clock.now()
        async with ctx.transaction() as session:
            org = await organization(session, who)
            user = await accounts.create_user(
                session, org, email=input.email, name=input.name, role=Role(input.role.value),
                now=now, actor_user_id=who.user_id, external_subject=input.external_subject,
            )  # fmt: skip
            account = None
            if input.with_account:
                account = await accounts.create_account(
                    session, org, kind=AccountKind.USER, user=user, now=now,
                    actor_user_id=who.user_id,
                )  # fmt: skip
        return i.CreateUserPayload(
            user=mapping.user(user), account=mapping.account(account) if account else None
        )

    @strawberry.mutation
    async def create_account(self, info: Info, input: i.CreateAccountInput) -> t.Account:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            owner = None
            if input.user_id is not None:
                owner = await accounts.get_user(
                    session, org, pk_of(input.user_id, "User", field="userId")
                )
            account = await accounts.create_account(
                session, org, kind=AccountKind(input.kind.value), name=input.name,
                email=input.email, user=owner, autopay=input.autopay, now=ctx.clock.now(),
                actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.account(account)

    @strawberry.mutation
    async def update_account(
        self, info: Info, account_id: strawberry.ID, input: i.UpdateAccountInput
    ) -> t.Account:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, account_id))
            await accounts.update_account(
                session, org, account, ctx.clock.now(), name=input.name, email=input.email,
                active=input.active, actor_user_id=who.user_id,
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
        who = require_writer(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, account_id))
            await accounts.set_autopay(
                session, org, account, enabled, ctx.clock.now(), actor_user_id=who.user_id
            )
        return mapping.account(account)

    @strawberry.mutation
    async def create_plan_template(self, info: Info, input: i.PlanTemplateInput) -> t.PlanTemplate:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            template = await plans.create_plan_template(
                session, org, name=input.name, price=amount(input.price, who, "price"),
                interval=input.interval, now=ctx.clock.now(),
                setup_fee=amount(input.setup_fee, who, "setupFee"),
                deposit=amount(input.deposit, who, "deposit"),
                tax_rate_ppm=tax_rate(input.tax_rate), actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.plan_template(template, who.currency)

    @strawberry.mutation(description="Put an account on a plan; its first invoice is made now.")
    async def subscribe_to_plan(self, info: Info, input: i.SubscribeInput) -> t.PlanSubscription:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, input.account_id))
            template = await plans.get_template(
                session, org, pk_of(input.plan_template_id, "PlanTemplate", field="planTemplateId")
            )
            subscription = await plans.subscribe(
                session, org, account, template, input.start_date, ctx.clock.now(),
                end_date=input.end_date, actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.plan_subscription(subscription, who.currency)

    @strawberry.mutation(description="Move a plan's end date; earlier ends may credit paid days.")
    async def change_plan_end_date(self, info: Info, input: i.PlanEndInput) -> t.PlanSubscription:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            subscription = await plans.get_subscription(
                session, org,
                pk_of(input.plan_subscription_id, "PlanSubscription", field="planSubscriptionId"),
            )  # fmt: skip
            change = await plans.update_end_date(
                session, org, subscription, input.end_date, ctx.clock.now(),
                credit_unused_periods=input.credit_unused_periods,
                deposit_return=amount(input.deposit_return, who, "depositReturn"),
                actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.plan_subscription(change.subscription, who.currency)

    @strawberry.mutation(description="Cancel a plan (today, or after a given last day).")
    async def cancel_plan(self, info: Info, input: i.PlanEndInput) -> t.PlanSubscription:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            subscription = await plans.get_subscription(
                session, org,
                pk_of(input.plan_subscription_id, "PlanSubscription", field="planSubscriptionId"),
            )  # fmt: skip
            change = await plans.cancel(
                session, org, subscription, ctx.clock.now(), last_day=input.end_date,
                credit_unused_periods=input.credit_unused_periods,
                deposit_return=amount(input.deposit_return, who, "depositReturn"),
                actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.plan_subscription(change.subscription, who.currency)

    @strawberry.mutation(description="Book a resource; members may book for their own accounts.")
    async def create_booking(self, info: Info, input: i.CreateBookingInput) -> t.Booking:
        who = require_writer(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, input.account_id))
            booking = await bookings.create_booking(
                session, org, account, resource_name=input.resource_name,
                starts_at=_instant(input.starts_at, "startsAt"),
                ends_at=_instant(input.ends_at, "endsAt"), now=ctx.clock.now(),
                price=optional_amount(input.price, who, "price"),
                hourly_rate=optional_amount(input.hourly_rate, who, "hourlyRate"),
                tax_rate_ppm=tax_rate(input.tax_rate), booked_by_user_id=who.user_id,
                actor_user_id=who.user_id,
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
        async def change(session: Any, org: Any, booking: Any, create: bool) -> Any:
            return await bookings.shorten_booking(
                session, org, booking, _instant(ends_at, "endsAt"), context(info).clock.now(),
                create_credit=create, actor_user_id=viewer(info).user_id,
            )  # fmt: skip

        return await _booking_change(info, booking_id, create_credit, change)

    @strawberry.mutation(
        description="Cancel a booking. Members always get credit for a paid booking; admins "
        "choose with createCredit (default true)."
    )
    async def cancel_booking(
        self, info: Info, booking_id: strawberry.ID, create_credit: bool = True
    ) -> i.BookingChangePayload:
        async def change(session: Any, org: Any, booking: Any, create: bool) -> Any:
            return await bookings.cancel_booking(
                session, org, booking, context(info).clock.now(), create_credit=create,
                actor_user_id=viewer(info).user_id,
            )  # fmt: skip

        return await _booking_change(info, booking_id, create_credit, change)

    @strawberry.mutation(description="Check an account in for a day pass at the given rate.")
    async def check_in_day_pass(self, info: Info, input: i.DayPassInput) -> t.LineItem | None:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, input.account_id))
            line = await bookings.check_in_day_pass(
                session, org, account, price=amount(input.price, who, "price"),
                now=ctx.clock.now(), description=input.description,
                tax_rate_ppm=tax_rate(input.tax_rate), actor_user_id=who.user_id,
            )  # fmt: skip
        return None if line is None else mapping.line(line, who.currency)

    @strawberry.mutation(description="A one-time sale, placed per the additional-charges policy.")
    async def add_one_time_charge(self, info: Info, input: i.ChargeInput) -> t.LineItem:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, input.account_id))
            line = await bookings.add_one_time_charge(
                session, org, account, description=input.description,
                unit_price=amount(input.unit_price, who, "unitPrice"), now=ctx.clock.now(),
                quantity=input.quantity, tax_rate_ppm=tax_rate(input.tax_rate),
                actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.line(line, who.currency)

    @strawberry.mutation(description="A manual invoice with custom charge and credit lines.")
    async def create_manual_invoice(self, info: Info, input: i.ManualInvoiceInput) -> t.Invoice:
        who = require_admin(info)
        ctx = context(info)
        lines = [_manual_line(line, who, n) for n, line in enumerate(input.lines)]
        async with ctx.transaction() as session:
            org = await organization(session, who)
            account = await accounts.get_account(session, org, account_pk(who, input.account_id))
            invoice = await invoices.create_manual_invoice(
                session, org, account, lines, ctx.clock.now(), due_date=input.due_date,
                finalize_now=input.finalize_now, apply_credit=input.apply_credit,
                actor_user_id=who.user_id,
            )  # fmt: skip
        return mapping.invoice(invoice)

    @strawberry.mutation(description="Add a charge (or, negative, a credit) to a pending invoice.")
    async def add_invoice_line(self, info: Info, input: i.AddLineInput) -> t.Invoice:
        who = require_admin(info)
        ctx = context(info)
        unit_price = amount(input.unit_price, who, "unitPrice")
        async with ctx.transaction() as session:
            org = await organization(session, who)
            invoice = await invoices.get_invoice(
                session, org, pk_of(input.invoice_id, "Invoice", field="invoiceId")
            )
            spec = invoices.LineSpec(
                description=input.description, unit_price=unit_price, quantity=input.quantity,
                kind=invoices.LineKind.CREDIT if unit_price < 0 else invoices.LineKind.CHARGE,
                tax_rate_ppm=tax_rate(input.tax_rate),
            )  # fmt: skip
            await invoices.add_line(
                session, org, invoice, spec, ctx.clock.now(), actor_user_id=who.user_id
            )
        return mapping.invoice(invoice)

    @strawberry.mutation(
        description="Remove a line: from a pending invoice it goes; from an unpaid finalized "
        "one it moves onto a new VOID invoice; paid, processing and void invoices refuse."
    )
    async def remove_line_item(
        self, info: Info, line_item_id: strawberry.ID
    ) -> i.RemoveLineItemPayload:
        who = require_admin(info)
        ctx = context(info)
        async with ctx.transaction() as session:
            org = await organization(session, who)
            line = await invoices.get_line(
                session, org, pk_of(line_item_id, "LineItem", field="lineItemId")
            )
            removed = await invoices.remove_line(
                session, org, line, ctx.clock.now(), actor_user_id=who.user_id
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
        async def finalize(session: Any, org: Any, invoice: Any, now: datetime, actor: int) -> None:
            await invoices.finalize(
                session, org, invoice, now, manual=True, apply_credit=apply_credit,
                actor_user_id=actor,
            )  # fmt: skip

        return await _invoice_action(info, invoice_id, finalize, "Invoice")

    @strawberry.mutation(description="Void an invoice (or credit note); it keeps its number.")
    async def void_invoice(self, info: Info, invoice_id: strawberry.ID) -> t.Invoice:
        async def void(session: Any, org: Any, invoice: Any, now: datetime, actor: int) -> None:
            await invoices.void(session, org, invoice, now, actor_user_id=actor)

        return await _invoice_action(info, invoice_id, void, "Invoice", "CreditNote")

    @strawberry.mutation(description="Un-void: back to the status its dates and balance give.")
    async def unvoid_invoice(self, info: Info, invoice_id: strawberry.ID) -> t.Invoice:
        async def unvoid(session: Any, org: Any, invoice: Any, now: datetime, actor: int) -> None:
            await invoices.unvoid(session, org, invoice, now, actor_user_id=actor)

        return await _invoice_action(info, invoice_id, unvoid, "Invoice", "CreditNote")

    @strawberry.mutation(
        description="Run the billing clock for an instant (default: now): finalize what is "
        "due, move statuses, add plan periods. Idempotent. An instant in the past is a "
        "catch-up; one more than 5 minutes after now is refused (VALIDATION)."
    )
    async def run_billing(self, info: Info, as_of: datetime | None = None) -> i.BillingRun:
        who = require_admin(info)
        ctx = context(info)
        now = ctx.clock.now()
        instant = now if as_of is None else refuse_future(_instant(as_of, "asOf"), now)
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


async def _invoice_action(info: Info, invoice_id: str, action: Any, *types: str) -> t.Invoice:
    """Admin, one invoice, one engine call in one transaction, the invoice back."""
    who = require_admin(info)
    ctx = context(info)
    async with ctx.transaction() as session:
        org = await organization(session, who)
        invoice = await invoices.get_invoice(
            session, org, pk_of(invoice_id, *types, field="invoiceId")
        )
        await action(session, org, invoice, ctx.clock.now(), who.user_id)
    return mapping.invoice(invoice)


async def _membership(info: Info, team_id: str, user_id: str, *, add: bool) -> t.Account:
    who = require_admin(info)
    ctx = context(info)
    async with ctx.transaction() as session:
        org = await organization(session, who)
        team = await accounts.get_account(session, org, account_pk(who, team_id, "teamId"))
        user = await accounts.get_user(session, org, pk_of(user_id, "User", field="userId"))
        change = accounts.add_team_member if add else accounts.remove_team_member
        await change(session, org, team, user, ctx.clock.now(), actor_user_id=who.user_id)
    return mapping.account(team)


async def _booking_change(
    info: Info, booking_id: str, create_credit: bool, change: Any
) -> i.BookingChangePayload:
    who = require_writer(info)
    ctx = context(info)
    async with ctx.transaction() as session:
        org = await organization(session, who)
        booking = await bookings.get_booking(
            session, org, pk_of(booking_id, "Booking", field="bookingId")
        )
        ensure_account_visible(who, booking.account_id)
        # rules §5.2: a member's own cancellation always credits a paid booking.
        create = True if who.role == Role.MEMBER else create_credit
        result = await change(session, org, booking, create)
    credit = result.credit_line
    return i.BookingChangePayload(
        booking=mapping.booking(result.booking, who.currency),
        adjustment=str(result.adjustment),
        credit_line=mapping.line(credit, who.currency) if credit is not None else None,
    )


def _manual_line(
    line: i.ManualLineInput, who: Any, n: int
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
