"""Figures for BI tools and the admin dashboard: revenue by period, receivables aging,
invoice collections by status, outstanding credit, recurring revenue from plans and a
payments summary.

Each figure is a set-based SQL statement (rows are grouped in the database, never
summed in a Python loop), exact in integer minor units of the organization's currency.

Dates are the organization's calendar dates. An invoice's issue date and an offline
payment's received-on date are stored as local dates already; an instant (a card
payment's success, a refund, a credit allocation) becomes a local date in SQL:
PostgreSQL converts with ``AT TIME ZONE``; SQLite, which has no zone database, adds
the zone's UTC offset, taken piecewise from zoneinfo for the asked span (offsets
change a few times a year, so a short CASE covers any span of at most five years).

What each figure counts (void documents count nowhere):
- invoiced / tax: totals and tax of finalized invoices and credit notes by issue
  date, so credit notes (negative totals) are netted out; creditIssued is the credit
  of those credit notes on its own.
- received: succeeded payments (the whole amount, an overpayment included) by their
  date — the received-on date of an offline payment, else the local date it
  succeeded; refunded: succeeded refunds by the date they were made; collected is
  received less refunded.
- creditApplied: live (not removed) credit allocations by the date they were made.
- receivables: today's open balances (UPCOMING, DUE, OVERDUE, PROCESSING invoices)
  aged by days past their due date at ``as_of``.
- recurring revenue: plans whose service covers ``as_of`` (start ≤ as_of ≤ end),
  one-time plans excluded; a quarter is a third of a year's four, so the exact yearly
  figure (ARR) is kept and MRR is ARR ÷ 12 rounded half-up.

Where the figure is for the whole organization on PostgreSQL, revenue, collections,
the payments summary and receivables read the per-day rollups that triggers keep as
rows change (``models.figures``): a few hundred rows for a year, however large the
ledger. A figure for some accounts or an account kind reads the ledger through the
accounts' indexes, as SQLite always does; both give the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    DateTime,
    Integer,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from models import (
    Account,
    CreditAllocation,
    DocumentType,
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentStatus,
    PlanInterval,
    PlanSubscription,
    PlanTemplate,
    Refund,
    RefundStatus,
)
from models.figures import (
    DAY_ZERO_DATE as DAY_ZERO,
)
from models.figures import (
    collection_days,
    compact_statements,
    open_accounts,
    open_dues,
    payment_days,
    revenue_days,
)
from services.clock import start_of_day
from services.errors import ValidationError

# The longest span a figure is asked over: five years, leap days included.
MAX_SPAN_DAYS = 5 * 365 + 2
MAX_PAGE = 100
ONE_DAY = timedelta(days=1)

OPEN_STATUSES = (
    InvoiceStatus.UPCOMING,
    InvoiceStatus.DUE,
    InvoiceStatus.OVERDUE,
    InvoiceStatus.PROCESSING,
)
FINALIZED_STATUSES = (*OPEN_STATUSES, InvoiceStatus.PAID, InvoiceStatus.VOID)


class Grouping(StrEnum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


class AgingBucket(StrEnum):
    CURRENT = "CURRENT"
    DAYS_1_30 = "DAYS_1_30"
    DAYS_31_60 = "DAYS_31_60"
    DAYS_61_90 = "DAYS_61_90"
    OVER_90 = "OVER_90"


AGING_BUCKETS = tuple(AgingBucket)
# Upper bound of days past due of each bucket but the last (CURRENT: not yet past due).
_AGING_LIMITS = (0, 30, 60, 90)


def aging_bucket(days_past_due: int) -> AgingBucket:
    for bucket, limit in zip(AGING_BUCKETS, _AGING_LIMITS, strict=False):
        if days_past_due <= limit:
            return bucket
    return AgingBucket.OVER_90


@dataclass(frozen=True)
class Scope:
    """Whose figures: one organization, optionally some of its accounts or a kind."""

    organization_id: int
    timezone: str
    account_ids: tuple[int, ...] | None = None
    account_kind: str | None = None
    # Read the ledger even where the rollups could answer (the tests compare the two).
    from_ledger: bool = False

    @property
    def whole_organization(self) -> bool:
        return self.account_ids is None and self.account_kind is None

    def accounts(self, column: Any) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.account_ids is not None:
            clauses.append(column.in_(self.account_ids))
        if self.account_kind is not None:
            clauses.append(
                column.in_(
                    select(Account.id).where(
                        Account.organization_id == self.organization_id,
                        Account.kind == self.account_kind,
                    )
                )
            )
        return clauses


@dataclass(frozen=True)
class Span:
    """An inclusive range of local dates, at most five years long."""

    first: date
    last: date

    @classmethod
    def of(cls, first: date, last: date) -> Span:
        check_date(first, "from")
        check_date(last, "to")
        if last < first:
            raise ValidationError("`to` must be on or after `from`.")
        if (last - first).days >= MAX_SPAN_DAYS:
            raise ValidationError(
                "Ask for at most five years at a time (`from` to `to`); split longer spans."
            )
        return cls(first, last)


# Dates a figure may be asked about; far beyond these, date arithmetic overflows.
EARLIEST = date(1900, 1, 1)
LATEST = date(2999, 12, 31)


def check_date(day: date, name: str) -> date:
    if not EARLIEST <= day <= LATEST:
        raise ValidationError(
            f"`{name}` must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}."
        )
    return day


def period_start(day: date, grouping: Grouping) -> date:
    if grouping is Grouping.MONTH:
        return day.replace(day=1)
    if grouping is Grouping.WEEK:
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    return day


def _next_period(start: date, grouping: Grouping) -> date:
    if grouping is Grouping.MONTH:
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start + timedelta(days=7 if grouping is Grouping.WEEK else 1)


def periods(span: Span, grouping: Grouping) -> list[tuple[date, date, date]]:
    """(key, first day, last day) of each period meeting ``span``, clipped to it."""
    out = []
    key = period_start(span.first, grouping)
    while key <= span.last:
        following = _next_period(key, grouping)
        out.append((key, max(key, span.first), min(following - ONE_DAY, span.last)))
        key = following
    return out


# --------------------------------------------------------------------------- local dates


def _utc_offsets(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """(from this instant, UTC offset in seconds) pieces covering [start, end)."""

    def offset(instant: datetime) -> int:
        delta = instant.astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    pieces = [(start, offset(start))]
    probe = start
    while probe < end:
        step = min(probe + ONE_DAY, end)
        if offset(step) != pieces[-1][1]:
            # Offsets change on whole seconds: bisect the epoch seconds of that day.
            low, high = int(probe.timestamp()), int(step.timestamp())
            while high - low > 1:
                middle = (low + high) // 2
                if offset(datetime.fromtimestamp(middle, UTC)) == pieces[-1][1]:
                    low = middle
                else:
                    high = middle
            since = datetime.fromtimestamp(high, UTC)
            pieces.append((since, offset(since)))
        probe = step
    return pieces


@lru_cache(maxsize=64)
def _day_starts(timezone: str, first: date, days: int) -> tuple[datetime, ...]:
    return tuple(start_of_day(first + timedelta(days=n), timezone) for n in range(days))


class Calendar:
    """The organization's calendar in SQL for one span, cut into periods.

    Each row gets a *period key*. PostgreSQL finds it with ``width_bucket`` (a binary
    search of the periods' first days, or of the instants those days begin): a few
    comparisons a row instead of a time zone conversion, which is what makes a year of
    100,000 rows cheap. SQLite keys a row by its period's first date, reached through
    the local date. ``index`` turns either key into the position in ``periods``.
    """

    def __init__(
        self, dialect: str, timezone: str, span: Span, grouping: Grouping = Grouping.DAY
    ) -> None:
        self.dialect = dialect
        self.timezone = timezone
        self.span = span
        self.grouping = grouping
        self.periods = periods(span, grouping)
        self.start_at = start_of_day(span.first, timezone)
        self.end_at = start_of_day(span.last + ONE_DAY, timezone)
        self._keys = {key: i for i, (key, _, _) in enumerate(self.periods)}

    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"

    def instant_in_span(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self.start_at, column < self.end_at)

    def date_in_span(self, column: Any) -> ColumnElement[bool]:
        return column.between(self.span.first, self.span.last)

    def index(self, key: Any) -> int:
        if self.postgresql:
            return int(key) - 1
        return self._keys[key]

    def period_of_date(self, day: Any) -> ColumnElement[Any]:
        if self.postgresql:
            firsts = [first for _, first, _ in self.periods]
            return func.width_bucket(day, literal(firsts, ARRAY(Date())), type_=Integer())
        return self._period(day)

    def period_of_instant(self, instant: Any) -> ColumnElement[Any]:
        if self.postgresql:
            starts = [start_of_day(first, self.timezone) for _, first, _ in self.periods]
            return func.width_bucket(
                instant, literal(starts, ARRAY(DateTime(timezone=True))), type_=Integer()
            )
        return self._period(self.local_date(instant))

    def days_since(self, instant: Any, day: Any) -> ColumnElement[int]:
        """Whole local days from ``day`` to the local date of ``instant`` (in span)."""
        if self.postgresql:
            days = (self.span.last - self.span.first).days + 1
            starts = list(_day_starts(self.timezone, self.span.first, days))
            # Bucket n is local date first + (n - 1).
            position = func.width_bucket(
                instant, literal(starts, ARRAY(DateTime(timezone=True))), type_=Integer()
            )
            return type_coerce(position - 1 + (literal(self.span.first, Date()) - day), Integer())
        return self.days_between(self.local_date(instant), day)

    def days_between(self, later: Any, earlier: Any) -> ColumnElement[int]:
        if self.postgresql:
            return type_coerce(later - earlier, Integer())
        return cast(func.julianday(later) - func.julianday(earlier), Integer)

    def local_date(self, instant: Any) -> ColumnElement[date]:
        """SQLite: the local date of ``instant`` (exact inside the span), the zone's UTC
        offset added piecewise."""
        pieces = _utc_offsets(ZoneInfo(self.timezone), self.start_at, self.end_at)
        modifiers = [f"{seconds:+d} seconds" for _, seconds in pieces]
        shift: Any = literal(modifiers[0])
        if len(pieces) > 1:
            shift = case(
                *[(instant < since, modifiers[i]) for i, (since, _) in enumerate(pieces[1:])],
                else_=modifiers[-1],
            )
        return type_coerce(func.date(instant, shift), Date())

    def _period(self, day: Any) -> ColumnElement[date]:
        """SQLite: the first date of the (unclipped) period holding ``day``."""
        if self.grouping is Grouping.DAY:
            return type_coerce(day, Date())
        if self.grouping is Grouping.MONTH:
            return type_coerce(func.date(day, "start of month"), Date())
        # 'weekday 0' moves forward to Sunday (or stays); six days back is its Monday.
        return type_coerce(func.date(day, "weekday 0", "-6 days"), Date())


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _rollups(session: AsyncSession, scope: Scope) -> bool:
    """Whether this figure can be read from the rollups (``models.figures``)."""
    return scope.whole_organization and not scope.from_ledger and _dialect(session) == "postgresql"


async def compact(session: AsyncSession) -> None:
    """Fold the rollups' fresh rows into one row per key (PostgreSQL; the worker runs
    it every pass, in a transaction of its own). Figures are the same before and after."""
    if _dialect(session) != "postgresql":
        return
    for statement in compact_statements():
        await session.execute(text(statement))


def _sum(column: Any) -> ColumnElement[int]:
    # PostgreSQL sums BIGINT into NUMERIC; back to BIGINT so Python gets an int.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _zero() -> ColumnElement[int]:
    return literal_column("0", BigInteger)


_PAID_AT = func.coalesce(Payment.succeeded_at, Payment.created_at)


def _payment_days_after(cal: Calendar, due: Any) -> ColumnElement[int]:
    return case(
        (Payment.received_on.is_not(None), cal.days_between(Payment.received_on, due)),
        else_=cal.days_since(_PAID_AT, due),
    )


def _payment_in_span(cal: Calendar) -> ColumnElement[bool]:
    return or_(
        and_(Payment.received_on.is_not(None), cal.date_in_span(Payment.received_on)),
        and_(
            Payment.received_on.is_(None),
            cal.instant_in_span(_PAID_AT),
        ),
    )


# --------------------------------------------------------------------------- revenue


@dataclass(frozen=True)
class RevenuePeriod:
    start: date
    end: date
    invoiced: int = 0
    tax: int = 0
    credit_issued: int = 0
    received: int = 0
    refunded: int = 0
    credit_applied: int = 0

    @property
    def collected(self) -> int:
        return self.received - self.refunded


REVENUE_MEASURES = ("invoiced", "tax", "credit_issued", "received", "refunded", "credit_applied")


async def revenue(
    session: AsyncSession, scope: Scope, span: Span, grouping: Grouping
) -> list[RevenuePeriod]:
    """Per period of ``span``: invoiced (net of credit notes), tax, credit issued,
    money received and refunded, and credit applied (see the module docstring)."""
    cal = Calendar(_dialect(session), scope.timezone, span, grouping)
    org = scope.organization_id
    if _rollups(session, scope):
        days = (
            select(
                cal.period_of_date(revenue_days.c.day).label("period"),
                *[revenue_days.c[name] for name in REVENUE_MEASURES],
            )
            .where(revenue_days.c.organization_id == org, cal.date_in_span(revenue_days.c.day))
            .subquery("revenue_rollup")
        )
        return await _revenue_periods(
            session,
            cal,
            select(days.c.period, *[_sum(days.c[name]) for name in REVENUE_MEASURES]).group_by(
                days.c.period
            ),
        )

    def row(period: Any, **measures: Any) -> Any:
        columns = [measures.get(name, _zero()).label(name) for name in REVENUE_MEASURES]
        return select(period.label("period"), *columns)

    def per_period(rows: Any) -> Any:
        """Sum one source per period before the union, so each branch hands on a
        dozen rows rather than every payment."""
        sub = rows.subquery()
        return select(sub.c.period, *[_sum(sub.c[n]).label(n) for n in REVENUE_MEASURES]).group_by(
            sub.c.period
        )

    # Documents are summed per issue date first (a cheap grouping on a plain column),
    # so the period of each date is worked out once, not once per invoice.
    by_day = (
        select(
            Invoice.issue_date.label("day"),
            _sum(Invoice.total).label("total"),
            _sum(Invoice.tax).label("tax"),
            _sum(
                case(
                    (Invoice.document_type == DocumentType.CREDIT_NOTE, -Invoice.total),
                    else_=_zero(),
                )
            ).label("credit"),
        )
        .where(
            Invoice.organization_id == org,
            Invoice.document_type.in_([DocumentType.INVOICE, DocumentType.CREDIT_NOTE]),
            Invoice.status != InvoiceStatus.VOID,
            cal.date_in_span(Invoice.issue_date),
            *scope.accounts(Invoice.account_id),
        )
        .group_by(Invoice.issue_date)
        .subquery("documents_by_day")
    )
    documents = row(
        cal.period_of_date(by_day.c.day),
        invoiced=by_day.c.total,
        tax=by_day.c.tax,
        credit_issued=by_day.c.credit,
    )
    # Offline payments by their received-on date, the others by the instant they
    # succeeded: two plain branches rather than a CASE and an OR on every row.
    succeeded = [
        Payment.organization_id == org,
        Payment.status == PaymentStatus.SUCCEEDED,
        *scope.accounts(Payment.account_id),
    ]
    received_offline = row(cal.period_of_date(Payment.received_on), received=Payment.amount).where(
        *succeeded, Payment.received_on.is_not(None), cal.date_in_span(Payment.received_on)
    )
    received_online = row(cal.period_of_instant(_PAID_AT), received=Payment.amount).where(
        *succeeded, Payment.received_on.is_(None), cal.instant_in_span(_PAID_AT)
    )
    refunded = row(cal.period_of_instant(Refund.created_at), refunded=Refund.amount).where(
        Refund.organization_id == org,
        Refund.status == RefundStatus.SUCCEEDED,
        cal.instant_in_span(Refund.created_at),
        *scope.accounts(Refund.account_id),
    )
    applied = row(
        cal.period_of_instant(CreditAllocation.created_at),
        credit_applied=CreditAllocation.amount,
    ).where(
        CreditAllocation.organization_id == org,
        CreditAllocation.removed_at.is_(None),
        cal.instant_in_span(CreditAllocation.created_at),
        *scope.accounts(CreditAllocation.account_id),
    )
    rows = union_all(
        documents,
        per_period(received_offline),
        per_period(received_online),
        per_period(refunded),
        per_period(applied),
    ).subquery("revenue_rows")
    stmt = select(rows.c.period, *[_sum(rows.c[name]) for name in REVENUE_MEASURES]).group_by(
        rows.c.period
    )
    return await _revenue_periods(session, cal, stmt)


async def _revenue_periods(session: AsyncSession, cal: Calendar, stmt: Any) -> list[RevenuePeriod]:
    """Every period of the calendar, from rows of (period key, measures...)."""
    found: list[tuple[int, ...]] = [(0,) * len(REVENUE_MEASURES) for _ in cal.periods]
    for r in (await session.execute(stmt)).all():
        found[cal.index(r[0])] = tuple(int(v) for v in r[1:])
    return [
        RevenuePeriod(first, last, *values)
        for (_, first, last), values in zip(cal.periods, found, strict=True)
    ]


# --------------------------------------------------------------------------- collections


@dataclass(frozen=True)
class StatusFigures:
    status: InvoiceStatus
    count: int = 0
    total: int = 0
    amount_paid: int = 0
    credit_applied: int = 0
    balance_due: int = 0


@dataclass(frozen=True)
class CollectionsPeriod:
    start: date
    end: date
    statuses: list[StatusFigures]


_BALANCE = Invoice.total - Invoice.amount_paid - Invoice.credit_applied


async def invoice_collections(
    session: AsyncSession, scope: Scope, span: Span, grouping: Grouping = Grouping.MONTH
) -> list[CollectionsPeriod]:
    """Per period of issue date, finalized invoices (credit notes apart) by status."""
    cal = Calendar(_dialect(session), scope.timezone, span, grouping)
    if _rollups(session, scope):
        t = collection_days
        rows = (
            select(
                cal.period_of_date(t.c.day).label("period"),
                t.c.status,
                *[t.c[name] for name in COLLECTION_MEASURES],
            )
            .where(t.c.organization_id == scope.organization_id, cal.date_in_span(t.c.day))
            .subquery("collection_rows")
        )
        return await _collection_periods(session, cal, rows)
    balance = case(
        (and_(Invoice.status.in_(OPEN_STATUSES), Invoice.total > 0), _BALANCE), else_=_zero()
    )
    # Grouped per issue date and status first, then per period (see ``revenue``).
    by_day = (
        select(
            Invoice.issue_date.label("day"),
            Invoice.status.label("status"),
            func.count().label("count"),
            _sum(Invoice.total).label("total"),
            _sum(Invoice.amount_paid).label("amount_paid"),
            _sum(Invoice.credit_applied).label("credit_applied"),
            _sum(balance).label("balance_due"),
        )
        .where(
            Invoice.organization_id == scope.organization_id,
            Invoice.document_type == DocumentType.INVOICE,
            cal.date_in_span(Invoice.issue_date),
            *scope.accounts(Invoice.account_id),
        )
        .group_by(Invoice.issue_date, Invoice.status)
        .subquery("collections_by_day")
    )
    rows = select(
        cal.period_of_date(by_day.c.day).label("period"),
        by_day.c.status,
        by_day.c.count,
        by_day.c.total,
        by_day.c.amount_paid,
        by_day.c.credit_applied,
        by_day.c.balance_due,
    ).subquery("collection_rows")
    return await _collection_periods(session, cal, rows)


COLLECTION_MEASURES = ("count", "total", "amount_paid", "credit_applied", "balance_due")


async def _collection_periods(
    session: AsyncSession, cal: Calendar, rows: Any
) -> list[CollectionsPeriod]:
    """Every period and finalized status, from rows of (period key, status, measures)."""
    stmt = select(
        rows.c.period, rows.c.status, *[_sum(rows.c[name]) for name in COLLECTION_MEASURES]
    ).group_by(rows.c.period, rows.c.status)
    found: dict[tuple[int, str], tuple[int, ...]] = {}
    for r in (await session.execute(stmt)).all():
        found[(cal.index(r[0]), r[1])] = tuple(int(v) for v in r[2:])
    out = []
    for i, (_, first, last) in enumerate(cal.periods):
        statuses = []
        for status in FINALIZED_STATUSES:
            values = found.get((i, status.value))
            statuses.append(StatusFigures(status, *values) if values else StatusFigures(status))
        out.append(CollectionsPeriod(first, last, statuses))
    return out


# --------------------------------------------------------------------------- receivables


@dataclass(frozen=True)
class BucketFigures:
    bucket: AgingBucket
    balance: int = 0
    count: int = 0


@dataclass(frozen=True)
class AccountAging:
    account_id: int
    account_name: str
    balance: int
    count: int
    buckets: list[BucketFigures]


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    has_next: bool


@dataclass(frozen=True)
class Aging:
    as_of: date
    balance: int
    count: int
    account_count: int
    buckets: list[BucketFigures]


def _constant(value: str) -> ColumnElement[str]:
    """A string written into the statement rather than bound: PostgreSQL uses a partial
    index only when it can see that the query's condition implies the index's, which it
    cannot for a parameter of a cached generic plan."""
    return literal_column("'" + value.replace("'", "''") + "'")


def _open_invoice() -> list[ColumnElement[bool]]:
    return [
        Invoice.status.in_([_constant(s) for s in OPEN_STATUSES]),
        Invoice.document_type == _constant(DocumentType.INVOICE),
    ]


def _aging_rows(scope: Scope, as_of: date, among: Any = None) -> Any:
    bucket = case(
        *[
            (Invoice.due_date >= as_of - timedelta(days=limit), index)
            for index, limit in enumerate(_AGING_LIMITS)
        ],
        else_=len(_AGING_LIMITS),
    )
    return (
        select(
            Invoice.account_id.label("account_id"),
            bucket.label("bucket"),
            _BALANCE.label("balance"),
        )
        .where(
            Invoice.organization_id == scope.organization_id,
            *_open_invoice(),
            _BALANCE > 0,
            *scope.accounts(Invoice.account_id),
            *([] if among is None else [Invoice.account_id.in_(among)]),
        )
        .subquery("aging_rows")
    )


async def receivables_aging(session: AsyncSession, scope: Scope, as_of: date) -> Aging:
    """Open balances and invoice counts by days past due at ``as_of``, overall."""
    if _rollups(session, scope):
        return await _aging_from_rollups(session, scope, as_of)
    rows = _aging_rows(scope, as_of)
    # One pass: each bucket's balance and count, and how many accounts owe anything.
    measures = []
    for index in range(len(AGING_BUCKETS)):
        hit = rows.c.bucket == index
        measures += [
            _sum(case((hit, rows.c.balance), else_=_zero())),
            func.count(case((hit, 1), else_=None)),
        ]
    stmt = select(*measures, func.count(func.distinct(rows.c.account_id)))
    return _aging(as_of, [int(v) for v in (await session.execute(stmt)).one()])


def _aging(as_of: date, found: list[int]) -> Aging:
    """From each bucket's balance and count, in order, then the number of accounts."""
    buckets = [
        BucketFigures(b, found[2 * i], found[2 * i + 1]) for i, b in enumerate(AGING_BUCKETS)
    ]
    return Aging(
        as_of=as_of,
        balance=sum(b.balance for b in buckets),
        count=sum(b.count for b in buckets),
        account_count=found[-1],
        buckets=buckets,
    )


def _owing_accounts(scope: Scope) -> Any:
    """The accounts with an open balance, from the rollup: (account_id, balance)."""
    t = open_accounts
    balance = func.sum(t.c.balance)
    return (
        select(t.c.account_id, balance.label("balance"))
        .where(t.c.organization_id == scope.organization_id)
        .group_by(t.c.account_id)
        .having(func.sum(t.c.count) > 0)
    )


async def _aging_from_rollups(session: AsyncSession, scope: Scope, as_of: date) -> Aging:
    t = open_dues
    bucket = case(
        *[
            (t.c.due_date >= as_of - timedelta(days=limit), index)
            for index, limit in enumerate(_AGING_LIMITS)
        ],
        else_=len(_AGING_LIMITS),
    )
    rows = (
        select(bucket.label("bucket"), t.c.balance, t.c.count)
        .where(t.c.organization_id == scope.organization_id)
        .subquery("aging_rollup")
    )
    measures = []
    for index in range(len(AGING_BUCKETS)):
        hit = rows.c.bucket == index
        measures += [
            _sum(case((hit, rows.c.balance), else_=_zero())),
            _sum(case((hit, rows.c.count), else_=_zero())),
        ]
    accounts = select(func.count()).select_from(_owing_accounts(scope).subquery())
    stmt = select(*measures, accounts.scalar_subquery())
    return _aging(as_of, [int(v) for v in (await session.execute(stmt)).one()])


def _page_size(first: int | None) -> int | None:
    if first is not None and not 1 <= first <= MAX_PAGE:
        raise ValidationError(f"`first` must be between 1 and {MAX_PAGE}.")
    return first


def _after_largest(amount: Any, account_id: Any, after: tuple[int, int] | None) -> Any:
    """Keyset condition for "largest first, then by account id"."""
    if after is None:
        return true()
    last_amount, last_id = after
    return or_(amount < last_amount, and_(amount == last_amount, account_id > last_id))


async def receivables_by_account(
    session: AsyncSession,
    scope: Scope,
    as_of: date,
    *,
    first: int | None = None,
    after: tuple[int, int] | None = None,
) -> Page[AccountAging]:
    """Per account, largest balance first; ``after`` is the (balance, account id) of
    the last row of the previous page; ``first=None`` returns every account."""
    limit = _page_size(first)
    rows = _aging_rows(scope, as_of)
    if limit is not None and _rollups(session, scope):
        # The page's accounts come from the rollup (largest first, after the cursor);
        # their buckets from their own open invoices, in the same statement.
        owing = _owing_accounts(scope).subquery("owing")
        page_ids = (
            select(owing.c.account_id)
            .where(_after_largest(owing.c.balance, owing.c.account_id, after))
            .order_by(owing.c.balance.desc(), owing.c.account_id)
            .limit(limit + 1)
        )
        rows = _aging_rows(scope, as_of, page_ids)
    per_bucket = []
    for index in range(len(AGING_BUCKETS)):
        hit = rows.c.bucket == index
        per_bucket += [
            _sum(case((hit, rows.c.balance), else_=_zero())),
            func.sum(case((hit, 1), else_=0)),
        ]
    grouped = (
        select(
            rows.c.account_id.label("account_id"),
            _sum(rows.c.balance).label("balance"),
            func.count().label("count"),
            *[column.label(f"m{i}") for i, column in enumerate(per_bucket)],
        )
        .group_by(rows.c.account_id)
        .subquery("aging_accounts")
    )
    stmt = (
        select(grouped, Account.name)
        .join(Account, Account.id == grouped.c.account_id)
        .where(_after_largest(grouped.c.balance, grouped.c.account_id, after))
        .order_by(grouped.c.balance.desc(), grouped.c.account_id)
    )
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    found = (await session.execute(stmt)).all()
    page = found if limit is None else found[:limit]
    out = []
    for r in page:
        measures = [int(v) for v in r[3:-1]]
        buckets = [
            BucketFigures(b, measures[2 * i], measures[2 * i + 1])
            for i, b in enumerate(AGING_BUCKETS)
        ]
        out.append(AccountAging(int(r[0]), r[-1], int(r[1]), int(r[2]), buckets))
    return Page(out, limit is not None and len(found) > limit)


# --------------------------------------------------------------------------- credit


@dataclass(frozen=True)
class AccountCredit:
    account_id: int
    account_name: str
    remaining: int
    credit_note_count: int
    oldest_issue_date: date


@dataclass(frozen=True)
class CreditTotals:
    remaining: int
    credit_note_count: int
    account_count: int
    oldest_issue_date: date | None


_REMAINING = -Invoice.total - Invoice.credit_allocated - Invoice.credit_refunded


def _credit_where(scope: Scope) -> list[ColumnElement[bool]]:
    return [
        Invoice.organization_id == scope.organization_id,
        Invoice.document_type == _constant(DocumentType.CREDIT_NOTE),
        Invoice.status != InvoiceStatus.VOID,
        _REMAINING > 0,
        *scope.accounts(Invoice.account_id),
    ]


async def credit_outstanding(session: AsyncSession, scope: Scope) -> CreditTotals:
    """Credit still available on credit notes: the total, how many notes and accounts
    hold it, and the issue date of the oldest note with credit left."""
    stmt = select(
        _sum(_REMAINING),
        func.count(),
        func.count(func.distinct(Invoice.account_id)),
        func.min(Invoice.issue_date),
    ).where(*_credit_where(scope))
    r = (await session.execute(stmt)).one()
    return CreditTotals(int(r[0]), int(r[1]), int(r[2]), r[3])


async def credit_by_account(
    session: AsyncSession,
    scope: Scope,
    *,
    first: int | None = None,
    after: tuple[int, int] | None = None,
) -> Page[AccountCredit]:
    """Available credit per account, largest first (keyset as in receivables)."""
    limit = _page_size(first)
    grouped = (
        select(
            Invoice.account_id.label("account_id"),
            _sum(_REMAINING).label("remaining"),
            func.count().label("notes"),
            func.min(Invoice.issue_date).label("oldest"),
        )
        .where(*_credit_where(scope))
        .group_by(Invoice.account_id)
        .subquery("credit_accounts")
    )
    stmt = (
        select(grouped, Account.name)
        .join(Account, Account.id == grouped.c.account_id)
        .where(_after_largest(grouped.c.remaining, grouped.c.account_id, after))
        .order_by(grouped.c.remaining.desc(), grouped.c.account_id)
    )
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    found = (await session.execute(stmt)).all()
    page = found if limit is None else found[:limit]
    out = [AccountCredit(int(r[0]), r[4], int(r[1]), int(r[2]), r[3]) for r in page]
    return Page(out, limit is not None and len(found) > limit)


# --------------------------------------------------------------------------- recurring


@dataclass(frozen=True)
class RecurringFigures:
    """Recurring revenue of a set of plans: ``arr`` exact, ``mrr`` = arr ÷ 12 rounded
    half-up."""

    subscriptions: int
    arr: int
    mrr: int


@dataclass(frozen=True)
class TemplateRecurring:
    template_id: int
    name: str
    figures: RecurringFigures


@dataclass(frozen=True)
class Recurring:
    as_of: date
    total: RecurringFigures
    templates: list[TemplateRecurring] = field(default_factory=list)


_PERIODS_PER_YEAR = {PlanInterval.MONTHLY: 12, PlanInterval.QUARTERLY: 4, PlanInterval.YEARLY: 1}


def _annual_price() -> ColumnElement[int]:
    return case(
        *[
            (PlanSubscription.interval == interval, PlanSubscription.price * times)
            for interval, times in _PERIODS_PER_YEAR.items()
        ],
        else_=_zero(),
    )


def _mrr(arr: Any) -> ColumnElement[int]:
    # Integer division of a non-negative BIGINT on both databases: half-up rounding.
    return cast((arr + 6) // 12, BigInteger)


async def recurring_revenue(session: AsyncSession, scope: Scope, as_of: date) -> Recurring:
    """MRR and ARR of the plans running on ``as_of``, by plan template and overall."""
    where = [
        PlanSubscription.organization_id == scope.organization_id,
        PlanSubscription.interval.in_(list(_PERIODS_PER_YEAR)),
        PlanSubscription.start_date <= as_of,
        or_(PlanSubscription.end_date.is_(None), PlanSubscription.end_date >= as_of),
        *scope.accounts(PlanSubscription.account_id),
    ]
    arr = _sum(_annual_price())
    by_template = (
        select(
            PlanSubscription.template_id.label("template_id"),
            func.count().label("subscriptions"),
            arr.label("arr"),
        )
        .where(*where)
        .group_by(PlanSubscription.template_id)
        .subquery("recurring_templates")
    )
    stmt = (
        select(by_template, _mrr(by_template.c.arr), PlanTemplate.name)
        .join(PlanTemplate, PlanTemplate.id == by_template.c.template_id)
        .order_by(by_template.c.arr.desc(), by_template.c.template_id)
    )
    templates = [
        TemplateRecurring(int(r[0]), r[4], RecurringFigures(int(r[1]), int(r[2]), int(r[3])))
        for r in (await session.execute(stmt)).all()
    ]
    totals = select(func.count(), arr).where(*where).subquery("recurring_total")
    t = (await session.execute(select(totals, _mrr(totals.c[1])))).one()
    return Recurring(as_of, RecurringFigures(int(t[0]), int(t[1]), int(t[2])), templates)


# --------------------------------------------------------------------------- payments


@dataclass(frozen=True)
class PaymentGroup:
    method: str
    status: str
    count: int
    amount: int
    refunded: int
    # Over payments that succeeded: Σ (payment date − due date) and how many.
    days_after_due_total: int
    days_after_due_count: int

    @property
    def average_days_after_due(self) -> Decimal | None:
        if not self.days_after_due_count:
            return None
        mean = Decimal(self.days_after_due_total) / Decimal(self.days_after_due_count)
        return mean.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def payments_summary(session: AsyncSession, scope: Scope, span: Span) -> list[PaymentGroup]:
    """Payments dated in ``span`` by method and status: counts, amounts, refunds, and
    the average days from the invoice's due date to a succeeded payment."""
    cal = Calendar(_dialect(session), scope.timezone, span)
    if _rollups(session, scope):
        return await _payments_from_rollups(session, scope, span)
    days = case(
        (Payment.status == PaymentStatus.SUCCEEDED, _payment_days_after(cal, Invoice.due_date)),
        else_=None,
    )
    rows = (
        select(
            Payment.method.label("method"),
            Payment.status.label("status"),
            Payment.amount.label("amount"),
            Payment.refunded_amount.label("refunded"),
            days.label("days"),
        )
        .join(Invoice, Invoice.id == Payment.invoice_id)
        .where(
            Payment.organization_id == scope.organization_id,
            _payment_in_span(cal),
            *scope.accounts(Payment.account_id),
        )
        .subquery("payment_rows")
    )
    stmt = (
        select(
            rows.c.method,
            rows.c.status,
            func.count(),
            _sum(rows.c.amount),
            _sum(rows.c.refunded),
            _sum(rows.c.days),
            func.count(rows.c.days),
        )
        .group_by(rows.c.method, rows.c.status)
        .order_by(rows.c.method, rows.c.status)
    )
    return [
        PaymentGroup(r[0], r[1], *(int(v) for v in r[2:]))
        for r in (await session.execute(stmt)).all()
    ]


async def _payments_from_rollups(
    session: AsyncSession, scope: Scope, span: Span
) -> list[PaymentGroup]:
    t = payment_days
    # Σ (payment date − due date) = Σ days_count × (day − DAY_ZERO) − Σ due_days.
    since_zero = type_coerce(t.c.day - literal(DAY_ZERO, Date()), Integer())
    stmt = (
        select(
            t.c.method,
            t.c.status,
            _sum(t.c.count),
            _sum(t.c.amount),
            _sum(t.c.refunded),
            cast(
                func.coalesce(func.sum(t.c.days_count * since_zero - t.c.due_days), 0), BigInteger
            ),
            _sum(t.c.days_count),
        )
        .where(t.c.organization_id == scope.organization_id, t.c.day.between(span.first, span.last))
        .group_by(t.c.method, t.c.status)
        .having(func.sum(t.c.count) > 0)
        .order_by(t.c.method, t.c.status)
    )
    return [
        PaymentGroup(r[0], r[1], *(int(v) for v in r[2:]))
        for r in (await session.execute(stmt)).all()
    ]
