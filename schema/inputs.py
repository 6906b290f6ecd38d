"""Mutation inputs and payloads. Amounts are decimal strings in the organization's
currency; tax rates are percents with up to four decimals; ids are global ids."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import strawberry

from schema.enums import AccountKind, AdditionalChargesPolicy, PlanInterval, Role
from schema.types import Account, Booking, Invoice, LineItem, User


@strawberry.input(description="Only the fields given change.")
class InvoicePolicyInput:
    billing_day: int | None = None
    timezone: str | None = None
    additional_charges: AdditionalChargesPolicy | None = None
    due_today_grace_minutes: int | None = None
    overdue_after_days: int | None = None
    auto_apply_credit: bool | None = None
    credit_unused_plan_periods: bool | None = None
    block_bookings_when_overdue: bool | None = None
    autopay_default: bool | None = None
    autopay_retry_hours: int | None = None
    default_tax_rate: Decimal | None = None


@strawberry.input(description="The legal details on documents; only the fields given change.")
class DocumentIssuerInput:
    legal_name: str | None = None
    address: str | None = strawberry.field(
        default=None, description="Several lines are kept as written."
    )
    tax_id: str | None = None
    logo_base64: str | None = strawberry.field(
        default=None,
        description="A PNG or JPEG of at most 200 KiB (and 2000 pixels a side), base64-encoded.",
    )
    remove_logo: bool = False


@strawberry.input
class CreateUserInput:
    email: str
    name: str
    role: Role = Role.MEMBER
    with_account: bool = strawberry.field(
        default=True, description="Also open the user's own (USER) account."
    )
    external_subject: str | None = strawberry.field(
        default=None,
        description="The identity provider's `sub` for this person (sign-in by subject).",
    )


@strawberry.type
class CreateUserPayload:
    user: User
    account: Account | None


@strawberry.input
class CreateAccountInput:
    kind: AccountKind
    name: str | None = None
    email: str | None = None
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="For a USER account: whose it is."
    )
    autopay: bool | None = None


@strawberry.input
class UpdateAccountInput:
    name: str | None = None
    email: str | None = None
    active: bool | None = None


@strawberry.input
class PlanTemplateInput:
    name: str
    price: Decimal
    interval: PlanInterval
    setup_fee: Decimal = Decimal(0)
    deposit: Decimal = Decimal(0)
    tax_rate: Decimal | None = None


@strawberry.input
class SubscribeInput:
    account_id: strawberry.ID
    plan_template_id: strawberry.ID
    start_date: date
    end_date: date | None = None


@strawberry.input
class PlanEndInput:
    plan_subscription_id: strawberry.ID
    end_date: date | None = strawberry.field(
        default=None, description="Last day of service; null runs the plan on."
    )
    credit_unused_periods: bool | None = strawberry.field(
        default=None, description="Defaults to the policy's creditUnusedPlanPeriods."
    )
    deposit_return: Decimal = Decimal(0)


@strawberry.input
class CreateBookingInput:
    account_id: strawberry.ID
    resource_name: str
    starts_at: datetime
    ends_at: datetime
    price: Decimal | None = strawberry.field(default=None, description="The whole price…")
    hourly_rate: Decimal | None = strawberry.field(default=None, description="…or per hour.")
    tax_rate: Decimal | None = None


@strawberry.type
class BookingChangePayload:
    booking: Booking
    adjustment: str = strawberry.field(
        description="What happened to the charge: REMOVED_FROM_PENDING, REDUCED_ON_PENDING, "
        "CREDITED, CREDIT_DECLINED, UNPAID_NO_CREDIT or NOTHING_CHARGED."
    )
    credit_line: LineItem | None


@strawberry.input
class ChargeInput:
    account_id: strawberry.ID
    description: str
    unit_price: Decimal
    quantity: int = 1
    tax_rate: Decimal | None = None


@strawberry.input
class DayPassInput:
    account_id: strawberry.ID
    price: Decimal
    description: str = "Day pass"
    tax_rate: Decimal | None = None


@strawberry.input(description="A charge line (unitPrice) or a credit line (creditAmount).")
class ManualLineInput:
    description: str
    quantity: int = 1
    unit_price: Decimal | None = None
    credit_amount: Decimal | None = None
    tax_rate: Decimal | None = None


@strawberry.input
class ManualInvoiceInput:
    account_id: strawberry.ID
    lines: list[ManualLineInput]
    due_date: date | None = strawberry.field(default=None, description="Omit for due today.")
    finalize_now: bool = False
    apply_credit: bool = True


@strawberry.input
class AddLineInput:
    invoice_id: strawberry.ID
    description: str
    unit_price: Decimal = strawberry.field(description="Negative for a credit line.")
    quantity: int = 1
    tax_rate: Decimal | None = None


@strawberry.type
class RemoveLineItemPayload:
    invoice: Invoice
    trail_invoice: Invoice | None = strawberry.field(
        description="The VOID invoice that keeps a line removed from a finalized invoice."
    )


@strawberry.type
class BillingRun:
    as_of: datetime
    accounts_processed: int
    accounts_skipped: int
    invoices_finalized: int
    status_changes: int
    plan_periods_added: int
    plans_ended: int


@strawberry.type(description="One step of a test clock's advance: a billing run at `at`.")
class TestClockStep:
    at: datetime
    invoices_finalized: int
    status_changes: int
    payments_attempted: int
    plan_periods_added: int


@strawberry.type(description="What advancing a sandbox's test clock did, step by step.")
class TestClockAdvance:
    previous: datetime = strawberry.field(description="Where the clock was.")
    now: datetime = strawberry.field(description="Where the clock is now.")
    invoices_finalized: int
    status_changes: int
    payments_attempted: int
    stopped_short: bool = strawberry.field(
        description="True when the step limit stopped the walk before `to`; advance again."
    )
    steps: list[TestClockStep]
