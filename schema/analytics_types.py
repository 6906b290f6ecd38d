"""Types of the analytics queries (revenue, receivables aging, collections, credit,
recurring revenue, payments): exact Money figures in the organization's currency,
periods as local calendar dates."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import Enum

import strawberry

from schema.enums import AccountKind, InvoiceStatus, PaymentMethod, PaymentStatus
from schema.pagination import Connection
from schema.types import Money


@strawberry.enum(description="How a date range is cut into periods (weeks start on Monday).")
class PeriodGrouping(Enum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@strawberry.enum(description="Days past the due date: not yet due, 1–30, 31–60, 61–90, over 90.")
class AgingBucket(Enum):
    CURRENT = "CURRENT"
    DAYS_1_30 = "DAYS_1_30"
    DAYS_31_60 = "DAYS_31_60"
    DAYS_61_90 = "DAYS_61_90"
    OVER_90 = "OVER_90"


@strawberry.input(description="Narrow a figure to some accounts, or to one kind of account.")
class AnalyticsFilter:
    account_id: list[strawberry.ID] | None = None
    account_kind: AccountKind | None = None


@strawberry.type(description="Money in and out over one period of local dates.")
class RevenuePeriod:
    start: date
    end: date
    invoiced: Money = strawberry.field(
        description="Totals of finalized invoices less credit notes, by issue date."
    )
    tax: Money = strawberry.field(description="Tax of the same documents.")
    credit_issued: Money = strawberry.field(description="Credit of credit notes issued.")
    received: Money = strawberry.field(description="Succeeded payments, by payment date.")
    refunded: Money = strawberry.field(description="Succeeded refunds.")
    collected: Money = strawberry.field(description="Received less refunded.")
    credit_applied: Money = strawberry.field(description="Credit allocated to invoices.")


@strawberry.type
class Revenue:
    group_by: PeriodGrouping
    periods: list[RevenuePeriod]
    total: RevenuePeriod = strawberry.field(description="The whole range in one row.")


@strawberry.type(description="Finalized invoices of one status in one period.")
class StatusCollection:
    status: InvoiceStatus
    count: int
    total: Money
    amount_paid: Money
    credit_applied: Money
    balance_due: Money


@strawberry.type
class CollectionsPeriod:
    start: date
    end: date
    statuses: list[StatusCollection]


@strawberry.type
class InvoiceCollections:
    group_by: PeriodGrouping
    periods: list[CollectionsPeriod]


@strawberry.type
class AgingBucketFigures:
    bucket: AgingBucket
    balance: Money
    count: int = strawberry.field(description="Open invoices in the bucket.")


@strawberry.type(description="One account's open balance by days past due.")
class AccountReceivables:
    account_id: strawberry.ID
    account_name: str
    balance: Money
    count: int
    buckets: list[AgingBucketFigures]


@strawberry.type(description="Open balances today, aged by days past due at `asOf`.")
class ReceivablesAging:
    as_of: date
    balance: Money
    count: int
    account_count: int
    buckets: list[AgingBucketFigures]
    accounts: Connection[AccountReceivables] = strawberry.field(
        description="Per account, largest balance first (paged by `first`/`after`)."
    )


@strawberry.type(description="Credit an account can still use or be refunded.")
class AccountCredit:
    account_id: strawberry.ID
    account_name: str
    remaining: Money
    credit_note_count: int
    oldest_issue_date: date


@strawberry.type
class CreditOutstanding:
    remaining: Money
    credit_note_count: int
    account_count: int
    oldest_issue_date: date | None
    accounts: Connection[AccountCredit] = strawberry.field(
        description="Per account, most credit first (paged by `first`/`after`)."
    )


@strawberry.type(description="Recurring revenue of a set of running plans.")
class RecurringFigures:
    subscriptions: int
    mrr: Money = strawberry.field(description="ARR ÷ 12, rounded half-up.")
    arr: Money = strawberry.field(
        description="Monthly prices × 12, quarterly × 4, yearly × 1 (exact)."
    )


@strawberry.type
class PlanRecurringRevenue:
    template_id: strawberry.ID
    name: str
    figures: RecurringFigures


@strawberry.type
class RecurringRevenue:
    as_of: date
    total: RecurringFigures
    templates: list[PlanRecurringRevenue] = strawberry.field(description="Largest first.")


@strawberry.type(description="Payments of one method and status.")
class PaymentGroup:
    method: PaymentMethod
    status: PaymentStatus
    count: int
    amount: Money
    refunded: Money
    average_days_after_due: Decimal | None = strawberry.field(
        description="Succeeded payments only: mean days from the invoice's due date to "
        "the payment date (negative when paid early), to two places."
    )


@strawberry.type
class PaymentsSummary:
    groups: list[PaymentGroup]
