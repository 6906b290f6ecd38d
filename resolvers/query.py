"""The Query root: lists with filters and keyset pages, single objects, the viewer.

Every statement here is scoped to the viewer's organization and, for members, to the
accounts they may see; a row outside that scope reads as absent, never forbidden,
so ids from other tenants reveal nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import strawberry
from sqlalchemy import ColumnClause, Select, and_, case, func, literal, literal_column, or_, select
from strawberry.dataloader import DataLoader
from strawberry.types import Info

from models import (
    Account,
    Booking,
    CreditAllocation,
    DocumentType,
    Event,
    Invoice,
    InvoiceStatus,
    LineItem,
    Organization,
    Payment,
    PlanSubscription,
    PlanTemplate,
    Refund,
    User,
)
from models.enums import OUTSTANDING_STATUSES
from resolvers import identity, mapping, webhooks
from resolvers.analytics import AnalyticsQuery
from resolvers.cards import CardQuery
from resolvers.context import Viewer
from resolvers.notifications import NotificationQuery
from resolvers.pagination import Ordering, encode_cursor, paginate, parse_sequence_cursor
from resolvers.permissions import (
    account_scope,
    context,
    ensure_account_visible,
    pk_of,
    pks_of,
    viewer,
)
from schema import filters as f
from schema import types as t
from schema.enums import SortDirection
from schema.identity_types import ApiKey
from schema.ids import decode
from schema.pagination import Connection
from schema.webhook_types import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from services import money
from services.errors import ValidationError


def _amount_range(column: Any, bounds: f.AmountRange | None, currency: str) -> list[Any]:
    if bounds is None:
        return []
    clauses = []
    if bounds.min is not None:
        clauses.append(column >= money.parse(bounds.min, currency, field="min"))
    if bounds.max is not None:
        clauses.append(column <= money.parse(bounds.max, currency, field="max"))
    return clauses


def _date_range(column: Any, bounds: f.DateRange | None) -> list[Any]:
    if bounds is None:
        return []
    clauses = []
    if bounds.from_ is not None:
        clauses.append(column >= bounds.from_)
    if bounds.to is not None:
        clauses.append(column <= bounds.to)
    return clauses


def _instant_range(column: Any, bounds: f.DateTimeRange | None) -> list[Any]:
    if bounds is None:
        return []
    clauses = []
    for value, op in ((bounds.from_, column.__ge__), (bounds.to, column.__le__)):
        if value is not None:
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            clauses.append(op(aware))
    return clauses


def _account_kind(column: Any, kind: Any) -> list[Any]:
    if kind is None:
        return []
    return [column.in_(select(Account.id).where(Account.kind == kind.value))]


def _values(items: Sequence[Any]) -> list[str]:
    return [item.value for item in items]


def _ordering(*keys: Any, direction: SortDirection) -> Ordering:
    return Ordering(keys=keys, descending=direction == SortDirection.DESC)


# Inline literals, not bind parameters: the expression must read exactly like the
# one in ix_invoices_org_issue_id / ix_invoices_org_number_id for the index to serve
# the sort (a bound parameter makes it a different expression to the planner).
_EPOCH_LITERAL: ColumnClause[Any] = literal_column("'1970-01-01'")
_EMPTY_LITERAL: ColumnClause[Any] = literal_column("''")
_BALANCE = case(
    (
        and_(
            Invoice.status.in_([*OUTSTANDING_STATUSES, InvoiceStatus.PROCESSING]), Invoice.total > 0
        ),
        Invoice.total - Invoice.amount_paid - Invoice.credit_applied,
    ),
    else_=literal(0),
)
_REMAINING_CREDIT = -Invoice.total - Invoice.credit_allocated - Invoice.credit_refunded


def invoice_sort_key(field: str) -> Any:
    return {
        "due_date": Invoice.due_date,
        "issue_date": func.coalesce(Invoice.issue_date, _EPOCH_LITERAL),
        "number": func.coalesce(Invoice.number, _EMPTY_LITERAL),
        "total": Invoice.total,
        "balance_due": _BALANCE,
        "created_at": Invoice.created_at,
        "credit": -Invoice.total,
        "remaining_credit": _REMAINING_CREDIT,
    }[field]


def invoices_statement(who: Viewer, flt: f.InvoiceFilter | None) -> Select[Any]:
    """Invoices the viewer may see, filtered; shared by the list and the CSV export."""
    flt = flt or f.InvoiceFilter()
    doc_types = (
        _values(flt.document_type)
        if flt.document_type
        else [DocumentType.DRAFT, DocumentType.INVOICE]
    )
    where: list[Any] = [
        Invoice.organization_id == who.organization_id,
        account_scope(who, Invoice.account_id),
        Invoice.document_type.in_(doc_types),
    ]
    if flt.status is not None:
        where.append(Invoice.status.in_(_values(flt.status)))
    if flt.account_id is not None:
        where.append(Invoice.account_id.in_(pks_of(flt.account_id, "Account", field="accountId")))
    where += _account_kind(Invoice.account_id, flt.account_kind)
    where += _date_range(Invoice.issue_date, flt.issue_date)
    where += _date_range(Invoice.due_date, flt.due_date)
    where += _instant_range(Invoice.paid_at, flt.paid_at)
    where += _amount_range(Invoice.total, flt.total, who.currency)
    if flt.number:
        where.append(Invoice.number.startswith(flt.number, autoescape=True))
    if flt.has_balance is not None:
        where.append(_BALANCE > 0 if flt.has_balance else _BALANCE <= 0)
    return select(Invoice).where(*where)


def credit_notes_statement(who: Viewer, flt: f.CreditNoteFilter | None) -> Select[Any]:
    flt = flt or f.CreditNoteFilter()
    where: list[Any] = [
        Invoice.organization_id == who.organization_id,
        account_scope(who, Invoice.account_id),
        Invoice.document_type == DocumentType.CREDIT_NOTE,
    ]
    if flt.status is not None:
        where.append(Invoice.credit_note_status.in_(_values(flt.status)))
    if flt.account_id is not None:
        where.append(Invoice.account_id.in_(pks_of(flt.account_id, "Account", field="accountId")))
    where += _account_kind(Invoice.account_id, flt.account_kind)
    where += _date_range(Invoice.issue_date, flt.issue_date)
    where += _amount_range(-Invoice.total, flt.credit, who.currency)
    if flt.number:
        where.append(Invoice.number.startswith(flt.number, autoescape=True))
    if flt.has_available_credit is not None:
        live = and_(Invoice.status != InvoiceStatus.VOID, _REMAINING_CREDIT > 0)
        where.append(live if flt.has_available_credit else ~live)
    return select(Invoice).where(*where)


def invoice_items_statement(who: Viewer, flt: f.InvoiceItemFilter | None) -> Select[Any]:
    flt = flt or f.InvoiceItemFilter()
    where: list[Any] = [
        LineItem.organization_id == who.organization_id,
        account_scope(who, Invoice.account_id),
    ]
    if flt.kind is not None:
        where.append(LineItem.kind.in_(_values(flt.kind)))
    if flt.account_id is not None:
        where.append(Invoice.account_id.in_(pks_of(flt.account_id, "Account", field="accountId")))
    where += _account_kind(Invoice.account_id, flt.account_kind)
    if flt.invoice_id is not None:
        where.append(LineItem.invoice_id == pk_of(flt.invoice_id, "Invoice", "CreditNote"))
    if flt.invoice_status is not None:
        where.append(Invoice.status.in_(_values(flt.invoice_status)))
    where += _instant_range(LineItem.created_at, flt.created_at)
    where += _date_range(LineItem.period_start, flt.period_start)
    where += _amount_range(LineItem.amount, flt.amount, who.currency)
    return select(LineItem).join(Invoice, Invoice.id == LineItem.invoice_id).where(*where)


def refunds_statement(who: Viewer, flt: f.RefundFilter | None) -> Select[Any]:
    flt = flt or f.RefundFilter()
    where: list[Any] = [
        Refund.organization_id == who.organization_id,
        account_scope(who, Refund.account_id),
    ]
    if flt.status is not None:
        where.append(Refund.status.in_(_values(flt.status)))
    if flt.account_id is not None:
        where.append(Refund.account_id.in_(pks_of(flt.account_id, "Account", field="accountId")))
    if flt.payment_id is not None:
        where.append(Refund.payment_id == pk_of(flt.payment_id, "Payment", field="paymentId"))
    where += _instant_range(Refund.created_at, flt.created_at)
    return select(Refund).where(*where)


def credit_allocations_statement(who: Viewer, flt: f.CreditAllocationFilter | None) -> Select[Any]:
    flt = flt or f.CreditAllocationFilter()
    where: list[Any] = [
        CreditAllocation.organization_id == who.organization_id,
        account_scope(who, CreditAllocation.account_id),
    ]
    if flt.account_id is not None:
        where.append(
            CreditAllocation.account_id.in_(pks_of(flt.account_id, "Account", field="accountId"))
        )
    if flt.credit_note_id is not None:
        # A credit note keeps the id it had as a draft (an Invoice id) for its life.
        note = pk_of(flt.credit_note_id, "CreditNote", "Invoice", field="creditNoteId")
        where.append(CreditAllocation.credit_note_id == note)
    if flt.invoice_id is not None:
        where.append(
            CreditAllocation.invoice_id == pk_of(flt.invoice_id, "Invoice", field="invoiceId")
        )
    if flt.active is not None:
        live = CreditAllocation.removed_at.is_(None)
        where.append(live if flt.active else ~live)
    where += _instant_range(CreditAllocation.created_at, flt.created_at)
    return select(CreditAllocation).where(*where)


def payments_statement(who: Viewer, flt: f.PaymentFilter | None) -> Select[Any]:
    flt = flt or f.PaymentFilter()
    where: list[Any] = [
        Payment.organization_id == who.organization_id,
        account_scope(who, Payment.account_id),
    ]
    if flt.status is not None:
        where.append(Payment.status.in_(_values(flt.status)))
    if flt.method is not None:
        where.append(Payment.method.in_(_values(flt.method)))
    if flt.type is not None:
        where.append(Payment.type == flt.type.value)
    if flt.account_id is not None:
        where.append(Payment.account_id.in_(pks_of(flt.account_id, "Account", field="accountId")))
    where += _account_kind(Payment.account_id, flt.account_kind)
    if flt.invoice_id is not None:
        where.append(Payment.invoice_id == pk_of(flt.invoice_id, "Invoice", field="invoiceId"))
    where += _instant_range(Payment.created_at, flt.created_at)
    where += _amount_range(Payment.amount, flt.amount, who.currency)
    return select(Payment).where(*where)


def _connection_args(first: int | None, after: str | None) -> dict[str, Any]:
    return {"first": first, "after": after}


@strawberry.type
class Query(AnalyticsQuery, CardQuery, NotificationQuery):
    @strawberry.field(description="Who is asking: role, user, organization, visible accounts.")
    async def viewer(self, info: Info) -> t.Viewer:
        who = viewer(info)
        ctx = context(info)
        async with ctx.read_sessionmaker() as session:
            user = None if who.user_id is None else await session.get(User, who.user_id)
            org = await session.get(Organization, who.organization_id)
            stmt = select(Account).where(
                Account.organization_id == who.organization_id,
                account_scope(who, Account.id),
            )
            if who.account_ids is None:
                stmt = stmt.where(Account.user_id == who.user_id)
            # An API key is no person and has no accounts of its own.
            no_person = who.user_id is None
            accounts = [] if no_person else list(await session.scalars(stmt.order_by(Account.id)))
        assert (user is not None or no_person) and org is not None
        return t.Viewer(
            role=who.role,
            user=None if user is None else mapping.user(user),
            organization=mapping.organization(org),
            accounts=[mapping.account(a) for a in accounts],
        )

    @strawberry.field(description="The organization's API keys, revoked ones too (ADMIN only).")
    async def api_keys(self, info: Info) -> list[ApiKey]:
        return await identity.api_keys(info)

    @strawberry.field(description="The organization's webhook endpoints (ADMIN only).")
    async def webhook_endpoints(self, info: Info) -> list[WebhookEndpoint]:
        return await webhooks.webhook_endpoints(info)

    @strawberry.field(
        description="An endpoint's deliveries, newest first, with their attempts (ADMIN only)."
    )
    async def webhook_deliveries(
        self,
        info: Info,
        endpoint_id: strawberry.ID,
        status: list[WebhookDeliveryStatus] | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[WebhookDelivery]:
        return await webhooks.webhook_deliveries(info, endpoint_id, status, first, after)

    @strawberry.field
    async def organization(self, info: Info) -> t.Organization:
        return mapping.organization(await _organization_row(info))

    @strawberry.field(description="Fetch any object by its global id (null when not visible).")
    async def node(self, info: Info, id: strawberry.ID) -> t.Node | None:
        who = viewer(info)
        decoded = decode(id)
        if decoded is None:
            raise ValidationError("`id` is not a Deskbill global id.")
        type_name, pk = decoded
        loaders = context(info).loaders
        found: Any
        if type_name == "Organization":
            if pk != who.organization_id:
                return None
            return mapping.organization(await _organization_row(info))
        if type_name in ("Invoice", "CreditNote"):
            # A document answers its current type, whichever name its id was minted with.
            found = await loaders.credit_note.load(pk) or await loaders.invoice.load(pk)
            if found is None or not who.can_see_account(found.account_pk):
                return None
            document: t.Node = found
            return document
        by_type: dict[str, DataLoader[int, Any]] = {
            "Account": loaders.account,
            "Payment": loaders.payment,
            "Booking": loaders.booking,
            "User": loaders.user,
        }
        loader = by_type.get(type_name)
        if loader is None:
            return await _node_by_query(info, type_name, pk)
        found = await loader.load(pk)
        if found is None:
            return None
        account_pk = found.pk if type_name == "Account" else getattr(found, "account_pk", None)
        if type_name == "User":
            return found if who.account_ids is None or found.pk == who.user_id else None
        if account_pk is not None and not who.can_see_account(account_pk):
            return None
        node: t.Node = found
        return node

    @strawberry.field
    async def invoice(self, info: Info, id: strawberry.ID) -> t.Invoice | None:
        who = viewer(info)
        found: t.Invoice | None = await context(info).loaders.invoice.load(
            pk_of(id, "Invoice", "CreditNote")
        )
        if found is None or not who.can_see_account(found.account_pk):
            return None
        return found

    @strawberry.field
    async def credit_note(self, info: Info, id: strawberry.ID) -> t.CreditNote | None:
        who = viewer(info)
        found: t.CreditNote | None = await context(info).loaders.credit_note.load(
            pk_of(id, "CreditNote", "Invoice")
        )
        if found is None or not who.can_see_account(found.account_pk):
            return None
        return found

    @strawberry.field(description="Invoices (credit notes have their own list).")
    async def invoices(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.InvoiceFilter | None = None,
        sort: f.InvoiceSort | None = None,
    ) -> Connection[t.Invoice]:
        sort = sort or f.InvoiceSort()
        ordering = _ordering(
            invoice_sort_key(sort.field.value), Invoice.id, direction=sort.direction
        )
        return await paginate(
            context(info).read_sessionmaker,
            invoices_statement(viewer(info), filter),
            ordering,
            to_node=mapping.invoice,
            **_connection_args(first, after),
        )

    @strawberry.field
    async def credit_notes(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.CreditNoteFilter | None = None,
        sort: f.CreditNoteSort | None = None,
    ) -> Connection[t.CreditNote]:
        sort = sort or f.CreditNoteSort()
        ordering = _ordering(
            invoice_sort_key(sort.field.value), Invoice.id, direction=sort.direction
        )
        return await paginate(
            context(info).read_sessionmaker,
            credit_notes_statement(viewer(info), filter),
            ordering,
            to_node=mapping.credit_note,
            **_connection_args(first, after),
        )

    @strawberry.field(description="Every line across invoices (the 'Invoice items' page).")
    async def invoice_items(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.InvoiceItemFilter | None = None,
        sort: f.InvoiceItemSort | None = None,
    ) -> Connection[t.LineItem]:
        who = viewer(info)
        sort = sort or f.InvoiceItemSort()
        key = getattr(LineItem, sort.field.value)
        return await paginate(
            context(info).read_sessionmaker,
            invoice_items_statement(viewer(info), filter),
            _ordering(key, LineItem.id, direction=sort.direction),
            to_node=lambda row: mapping.line(row, who.currency),
            **_connection_args(first, after),
        )

    @strawberry.field
    async def payments(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.PaymentFilter | None = None,
        sort: f.PaymentSort | None = None,
    ) -> Connection[t.Payment]:
        sort = sort or f.PaymentSort()
        key = getattr(Payment, sort.field.value)
        return await paginate(
            context(info).read_sessionmaker,
            payments_statement(viewer(info), filter),
            _ordering(key, Payment.id, direction=sort.direction),
            to_node=mapping.payment,
            **_connection_args(first, after),
        )

    @strawberry.field
    async def refunds(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.RefundFilter | None = None,
        sort: f.RefundSort | None = None,
    ) -> Connection[t.Refund]:
        sort = sort or f.RefundSort()
        return await paginate(
            context(info).read_sessionmaker,
            refunds_statement(viewer(info), filter),
            _ordering(getattr(Refund, sort.field.value), Refund.id, direction=sort.direction),
            to_node=mapping.refund,
            **_connection_args(first, after),
        )

    @strawberry.field
    async def accounts(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.AccountFilter | None = None,
        sort: f.AccountSort | None = None,
    ) -> Connection[t.Account]:
        who = viewer(info)
        flt = filter or f.AccountFilter()
        sort = sort or f.AccountSort()
        where: list[Any] = [
            Account.organization_id == who.organization_id,
            account_scope(who, Account.id),
        ]
        if flt.kind is not None:
            where.append(Account.kind == flt.kind.value)
        if flt.active is not None:
            where.append(Account.active == flt.active)
        if flt.search:
            where.append(Account.name.ilike(f"%{flt.search}%"))
        if flt.has_available_credit is not None:
            with_credit = (
                select(Invoice.account_id)
                .where(
                    Invoice.organization_id == who.organization_id,
                    Invoice.document_type == DocumentType.CREDIT_NOTE,
                    Invoice.status != InvoiceStatus.VOID,
                    _REMAINING_CREDIT > 0,
                )
                .scalar_subquery()
            )
            clause = Account.id.in_(with_credit)
            where.append(clause if flt.has_available_credit else ~clause)
        return await paginate(
            context(info).read_sessionmaker,
            select(Account).where(*where),
            _ordering(getattr(Account, sort.field.value), Account.id, direction=sort.direction),
            to_node=mapping.account,
            **_connection_args(first, after),
        )

    @strawberry.field
    async def bookings(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: f.BookingFilter | None = None,
        sort: f.BookingSort | None = None,
    ) -> Connection[t.Booking]:
        who = viewer(info)
        flt = filter or f.BookingFilter()
        sort = sort or f.BookingSort()
        where: list[Any] = [
            Booking.organization_id == who.organization_id,
            account_scope(who, Booking.account_id),
        ]
        if flt.status is not None:
            where.append(Booking.status.in_(_values(flt.status)))
        if flt.account_id is not None:
            where.append(
                Booking.account_id.in_(pks_of(flt.account_id, "Account", field="accountId"))
            )
        where += _instant_range(Booking.starts_at, flt.starts_at)
        return await paginate(
            context(info).read_sessionmaker,
            select(Booking).where(*where),
            _ordering(getattr(Booking, sort.field.value), Booking.id, direction=sort.direction),
            to_node=lambda row: mapping.booking(row, who.currency),
            **_connection_args(first, after),
        )

    @strawberry.field(description="The event log after a cursor, oldest first (for polling).")
    async def events(
        self,
        info: Info,
        after: str | None = None,
        first: int | None = None,
        filter: f.EventFilter | None = None,
    ) -> Connection[t.Event]:
        return await paginate(
            context(info).read_sessionmaker,
            events_statement(viewer(info), filter),
            Ordering(keys=[Event.id], descending=False),
            to_node=mapping.event,
            first=first,
            after=None if after is None else _event_cursor_to_keyset(after),
        )

    @strawberry.field(description="May this account book now? If not, why (rules §8.1).")
    async def booking_eligibility(
        self, info: Info, account_id: strawberry.ID
    ) -> t.BookingEligibility:
        from services import accounts, bookings
        from services.policy import get_organization

        who = viewer(info)
        pk = pk_of(account_id, "Account", field="accountId")
        ensure_account_visible(who, pk)
        async with context(info).read_sessionmaker() as session:
            org = await get_organization(session, who.organization_id)
            account = await accounts.get_account(session, org, pk)
            verdict = await bookings.booking_eligibility(session, org, account)
        overdue = await context(info).loaders.invoice.load_many(verdict.overdue_invoice_ids)
        return t.BookingEligibility(
            eligible=verdict.eligible,
            reason=verdict.reason,
            overdue_invoices=[inv for inv in overdue if inv is not None],
        )

    @strawberry.field
    async def plan_templates(self, info: Info) -> list[t.PlanTemplate]:
        who = viewer(info)
        async with context(info).read_sessionmaker() as session:
            rows = await session.scalars(
                select(PlanTemplate)
                .where(PlanTemplate.organization_id == who.organization_id)
                .order_by(PlanTemplate.name, PlanTemplate.id)
            )
            return [mapping.plan_template(row, who.currency) for row in rows]

    @strawberry.field
    async def plan_subscriptions(
        self, info: Info, account_id: strawberry.ID | None = None
    ) -> list[t.PlanSubscription]:
        who = viewer(info)
        stmt = select(PlanSubscription).where(
            PlanSubscription.organization_id == who.organization_id,
            account_scope(who, PlanSubscription.account_id),
        )
        if account_id is not None:
            stmt = stmt.where(
                PlanSubscription.account_id == pk_of(account_id, "Account", field="accountId")
            )
        async with context(info).read_sessionmaker() as session:
            rows = await session.scalars(stmt.order_by(PlanSubscription.id).limit(500))
            return [mapping.plan_subscription(row, who.currency) for row in rows]


async def _organization_row(info: Info) -> Organization:
    who = viewer(info)
    async with context(info).read_sessionmaker() as session:
        org = await session.get(Organization, who.organization_id)
    assert org is not None
    return org


def events_statement(who: Viewer, flt: f.EventFilter | None) -> Select[Any]:
    flt = flt or f.EventFilter()
    where: list[Any] = [Event.organization_id == who.organization_id]
    if who.account_ids is not None:
        where.append(Event.account_id.in_(sorted(who.account_ids)))
    if flt.types:
        where.append(Event.type.in_(flt.types))
    if flt.account_id is not None:
        where.append(Event.account_id == pk_of(flt.account_id, "Account", field="accountId"))
    if flt.invoice_id is not None:
        pk = pk_of(flt.invoice_id, "Invoice", "CreditNote", field="invoiceId")
        where.append(or_(Event.invoice_id == pk, Event.credit_note_id == pk))
    if flt.payment_id is not None:
        where.append(Event.payment_id == pk_of(flt.payment_id, "Payment", field="paymentId"))
    return select(Event).where(*where)


def parse_event_cursor(after: str) -> int:
    return parse_sequence_cursor(after)


def _event_cursor_to_keyset(after: str) -> str:
    return encode_cursor([parse_event_cursor(after)])


async def _node_by_query(info: Info, type_name: str, pk: int) -> t.Node | None:
    """Types without a loader of their own: fetch one row, scoped like the lists."""
    from models import CreditAllocation

    who = viewer(info)
    model: Any = {
        "LineItem": LineItem,
        "CreditAllocation": CreditAllocation,
        "Refund": Refund,
        "PlanTemplate": PlanTemplate,
        "PlanSubscription": PlanSubscription,
        "Event": Event,
    }.get(type_name)
    if model is None:
        return None  # API keys are listed by `apiKeys`, not fetched as nodes
    async with context(info).read_sessionmaker() as session:
        row = await session.get(model, pk)
        if row is None or row.organization_id != who.organization_id:
            return None
        account_id = getattr(row, "account_id", None)
        if type_name == "LineItem":
            invoice = await session.get(Invoice, row.invoice_id)
            account_id = invoice.account_id if invoice else None
        if who.account_ids is not None and (
            account_id is None or account_id not in who.account_ids
        ):
            if type_name != "PlanTemplate":
                return None
    c = who.currency
    converted: t.Node = {
        "LineItem": lambda: mapping.line(row, c),
        "CreditAllocation": lambda: mapping.allocation(row, c),
        "Refund": lambda: mapping.refund(row),
        "PlanTemplate": lambda: mapping.plan_template(row, c),
        "PlanSubscription": lambda: mapping.plan_subscription(row, c),
        "Event": lambda: mapping.event(row),
    }[type_name]()
    return converted
