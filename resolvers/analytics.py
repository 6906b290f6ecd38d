"""The analytics root fields for admins and analysts: arguments checked and turned
into a scope and a span, one engine call (services.analytics) on the request's read
connection, figures mapped onto Money in the organization's currency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Annotated, TypeVar

import strawberry
from strawberry.types import Info

from models import Role
from resolvers.mapping import money
from resolvers.pagination import decode_cursor, encode_cursor
from resolvers.permissions import context, pks_of, require_role
from resolvers.viewer import Viewer
from schema import analytics_types as a
from schema.enums import InvoiceStatus, PaymentMethod, PaymentStatus
from schema.ids import encode
from schema.pagination import Connection, Edge, PageInfo
from services import analytics
from services.clock import local_date
from services.errors import ValidationError

T = TypeVar("T")
R = TypeVar("R")

From = Annotated[date, strawberry.argument(name="from", description="First local date.")]
To = Annotated[date, strawberry.argument(description="Last local date (inclusive).")]


def analyst(info: Info) -> Viewer:
    return require_role(info, Role.ADMIN, Role.ANALYST)


def scope_for(who: Viewer, flt: a.AnalyticsFilter | None) -> analytics.Scope:
    ids = None
    kind = None
    if flt is not None:
        if flt.account_id is not None:
            ids = tuple(pks_of(flt.account_id, "Account", field="filter.accountId"))
        if flt.account_kind is not None:
            kind = flt.account_kind.value
    return analytics.Scope(who.organization_id, who.timezone, ids, kind)


def as_of_or_today(info: Info, who: Viewer, as_of: date | None) -> date:
    if as_of is None:
        return local_date(context(info).now(), who.timezone)
    return analytics.check_date(as_of, "asOf")


def after_key(after: str | None) -> tuple[int, int] | None:
    if after is None:
        return None
    values = decode_cursor(after, 2)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValidationError("The `after` cursor is not one this API gave out.")
    return int(str(values[0])), int(str(values[1]))


def connection(
    page: analytics.Page[R],
    after: str | None,
    total: int,
    key: Callable[[R], tuple[int, int]],
    node: Callable[[R], T],
) -> Connection[T]:
    edges = [Edge(cursor=encode_cursor(list(key(row))), node=node(row)) for row in page.rows]

    async def count_total() -> int:
        return total

    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next,
            has_previous_page=after is not None,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        count_total=count_total,
    )


def revenue_period(p: analytics.RevenuePeriod, currency: str) -> a.RevenuePeriod:
    return a.RevenuePeriod(
        start=p.start,
        end=p.end,
        invoiced=money(p.invoiced, currency),
        tax=money(p.tax, currency),
        credit_issued=money(p.credit_issued, currency),
        received=money(p.received, currency),
        refunded=money(p.refunded, currency),
        collected=money(p.collected, currency),
        credit_applied=money(p.credit_applied, currency),
    )


def revenue_total(
    rows: Sequence[analytics.RevenuePeriod], span: analytics.Span
) -> analytics.RevenuePeriod:
    return analytics.RevenuePeriod(
        span.first,
        span.last,
        *(sum(getattr(p, name) for p in rows) for name in analytics.REVENUE_MEASURES),
    )


def buckets(found: Sequence[analytics.BucketFigures], currency: str) -> list[a.AgingBucketFigures]:
    return [
        a.AgingBucketFigures(
            bucket=a.AgingBucket(b.bucket.value), balance=money(b.balance, currency), count=b.count
        )
        for b in found
    ]


def _gid(type_name: str, pk: int) -> strawberry.ID:
    return strawberry.ID(encode(type_name, pk))


@strawberry.type
class AnalyticsQuery:
    """Root fields merged into Query."""

    @strawberry.field(
        description="Invoiced, tax, received, refunded, collected, credit issued and "
        "applied per period of local dates (ADMIN, ANALYST)."
    )
    async def revenue(
        self,
        info: Info,
        from_: From,
        to: To,
        group_by: a.PeriodGrouping = a.PeriodGrouping.MONTH,
        filter: a.AnalyticsFilter | None = None,
    ) -> a.Revenue:
        who = analyst(info)
        span = analytics.Span.of(from_, to)
        scope = scope_for(who, filter)
        async with context(info).read_sessionmaker() as session:
            rows = await analytics.revenue(session, scope, span, analytics.Grouping(group_by.value))
        return a.Revenue(
            group_by=group_by,
            periods=[revenue_period(p, who.currency) for p in rows],
            total=revenue_period(revenue_total(rows, span), who.currency),
        )

    @strawberry.field(
        description="Finalized invoices by issue period and status: counts, totals, "
        "paid, credit applied and balance due (ADMIN, ANALYST)."
    )
    async def invoice_collections(
        self,
        info: Info,
        from_: From,
        to: To,
        group_by: a.PeriodGrouping = a.PeriodGrouping.MONTH,
        filter: a.AnalyticsFilter | None = None,
    ) -> a.InvoiceCollections:
        who = analyst(info)
        span = analytics.Span.of(from_, to)
        scope = scope_for(who, filter)
        async with context(info).read_sessionmaker() as session:
            rows = await analytics.invoice_collections(
                session, scope, span, analytics.Grouping(group_by.value)
            )
        c = who.currency
        return a.InvoiceCollections(
            group_by=group_by,
            periods=[
                a.CollectionsPeriod(
                    start=p.start,
                    end=p.end,
                    statuses=[
                        a.StatusCollection(
                            status=InvoiceStatus(s.status.value),
                            count=s.count,
                            total=money(s.total, c),
                            amount_paid=money(s.amount_paid, c),
                            credit_applied=money(s.credit_applied, c),
                            balance_due=money(s.balance_due, c),
                        )
                        for s in p.statuses
                    ],
                )
                for p in rows
            ],
        )

    @strawberry.field(
        description="Open balances and invoice counts by days past due at `asOf` "
        "(default today), overall and per account, largest first (ADMIN, ANALYST)."
    )
    async def receivables_aging(
        self,
        info: Info,
        as_of: date | None = None,
        filter: a.AnalyticsFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> a.ReceivablesAging:
        who = analyst(info)
        day = as_of_or_today(info, who, as_of)
        scope = scope_for(who, filter)
        cursor = after_key(after)
        async with context(info).read_sessionmaker() as session:
            total = await analytics.receivables_aging(session, scope, day)
            page = await analytics.receivables_by_account(
                session, scope, day, first=50 if first is None else first, after=cursor
            )
        c = who.currency
        return a.ReceivablesAging(
            as_of=day,
            balance=money(total.balance, c),
            count=total.count,
            account_count=total.account_count,
            buckets=buckets(total.buckets, c),
            accounts=connection(
                page,
                after,
                total.account_count,
                lambda r: (r.balance, r.account_id),
                lambda r: a.AccountReceivables(
                    account_id=_gid("Account", r.account_id),
                    account_name=r.account_name,
                    balance=money(r.balance, c),
                    count=r.count,
                    buckets=buckets(r.buckets, c),
                ),
            ),
        )

    @strawberry.field(
        description="Credit still available on credit notes: total, oldest, and per "
        "account, most first (ADMIN, ANALYST)."
    )
    async def credit_outstanding(
        self,
        info: Info,
        filter: a.AnalyticsFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> a.CreditOutstanding:
        who = analyst(info)
        scope = scope_for(who, filter)
        cursor = after_key(after)
        async with context(info).read_sessionmaker() as session:
            total = await analytics.credit_outstanding(session, scope)
            page = await analytics.credit_by_account(
                session, scope, first=50 if first is None else first, after=cursor
            )
        c = who.currency
        return a.CreditOutstanding(
            remaining=money(total.remaining, c),
            credit_note_count=total.credit_note_count,
            account_count=total.account_count,
            oldest_issue_date=total.oldest_issue_date,
            accounts=connection(
                page,
                after,
                total.account_count,
                lambda r: (r.remaining, r.account_id),
                lambda r: a.AccountCredit(
                    account_id=_gid("Account", r.account_id),
                    account_name=r.account_name,
                    remaining=money(r.remaining, c),
                    credit_note_count=r.credit_note_count,
                    oldest_issue_date=r.oldest_issue_date,
                ),
            ),
        )

    @strawberry.field(
        description="MRR and ARR of the plans running on `asOf` (default today), by "
        "plan template, with the number of subscriptions (ADMIN, ANALYST)."
    )
    async def recurring_revenue(
        self, info: Info, as_of: date | None = None, filter: a.AnalyticsFilter | None = None
    ) -> a.RecurringRevenue:
        who = analyst(info)
        day = as_of_or_today(info, who, as_of)
        scope = scope_for(who, filter)
        async with context(info).read_sessionmaker() as session:
            found = await analytics.recurring_revenue(session, scope, day)
        c = who.currency

        def figures(f: analytics.RecurringFigures) -> a.RecurringFigures:
            return a.RecurringFigures(
                subscriptions=f.subscriptions, mrr=money(f.mrr, c), arr=money(f.arr, c)
            )

        return a.RecurringRevenue(
            as_of=day,
            total=figures(found.total),
            templates=[
                a.PlanRecurringRevenue(
                    template_id=_gid("PlanTemplate", t.template_id),
                    name=t.name,
                    figures=figures(t.figures),
                )
                for t in found.templates
            ],
        )

    @strawberry.field(
        description="Payments dated in the range by method and status: counts, amounts, "
        "refunds, average days from due date to payment (ADMIN, ANALYST)."
    )
    async def payments_summary(
        self, info: Info, from_: From, to: To, filter: a.AnalyticsFilter | None = None
    ) -> a.PaymentsSummary:
        who = analyst(info)
        span = analytics.Span.of(from_, to)
        scope = scope_for(who, filter)
        async with context(info).read_sessionmaker() as session:
            groups = await analytics.payments_summary(session, scope, span)
        c = who.currency
        return a.PaymentsSummary(
            groups=[
                a.PaymentGroup(
                    method=PaymentMethod(g.method),
                    status=PaymentStatus(g.status),
                    count=g.count,
                    amount=money(g.amount, c),
                    refunded=money(g.refunded, c),
                    average_days_after_due=g.average_days_after_due,
                )
                for g in groups
            ]
        )
