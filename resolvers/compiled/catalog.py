"""What the compiled read path knows: for each GraphQL object type, its table and,
for each field, the SQL that yields it (a column, a money amount, a relation).

Templates name the row's alias ``{t}``; relations also name the related row's alias
``{s}``. Each entry mirrors one mapper in ``resolvers.mapping`` (and one loader in
``resolvers.loaders`` for relations): a field missing here sends the whole operation
down the ordinary Strawberry path, so an entry must be exactly as the mapper reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Leaf(Enum):
    """How a scalar column becomes JSON (see ``resolvers.compiled.sql``)."""

    TEXT = "text"  # strings and enum names (the stored value is the name)
    INT = "int"
    BOOL = "bool"
    DATE = "date"  # ISO date
    INSTANT = "instant"  # aware UTC datetime, as datetime.isoformat() writes it
    GID = "gid"  # a global id of the row's type


@dataclass(frozen=True)
class Column:
    leaf: Leaf
    sql: str
    # For a GID: the type named in the id, when it is not the type being read.
    id_type: str | None = None
    # Text written before and after the value (a document's URL around its id).
    affix: tuple[str, str] | None = None


@dataclass(frozen=True)
class Amount:
    """A ``Money``: minor units, and the currency (None: the viewer's currency, as
    the mappers of lines and allocations use)."""

    minor: str
    currency: str | None


@dataclass(frozen=True)
class One:
    target: str
    table: str
    where: str


@dataclass(frozen=True)
class Many:
    target: str
    table: str
    where: str
    order: str


Field = Column | Amount | One | Many


@dataclass(frozen=True)
class ObjectType:
    table: str
    fields: dict[str, Field]


# A global id of the type being read; a document (draft, invoice or credit note)
# keeps its Invoice id for life, as the mappers write it.
_ID = Column(Leaf.GID, "{t}.id")
_DOCUMENT_ID = Column(Leaf.GID, "{t}.id", id_type="Invoice")


_T, _I, _B, _D, _S = Leaf.TEXT, Leaf.INT, Leaf.BOOL, Leaf.DATE, Leaf.INSTANT


def _document_url(kind: str) -> Column:
    """``schema.types.document_path``: the route of the document, around its id."""
    return Column(Leaf.GID, "{t}.id", id_type="Invoice", affix=(f"/documents/{kind}/", ".pdf"))


_DOCUMENT: dict[str, Field] = {
    "number": Column(_T, "{t}.number"),
    "documentType": Column(_T, "{t}.document_type"),
    "currency": Column(_T, "{t}.currency"),
    "issueDate": Column(_D, "{t}.issue_date"),
    "dueDate": Column(_D, "{t}.due_date"),
    "periodStart": Column(_D, "{t}.period_start"),
    "periodEnd": Column(_D, "{t}.period_end"),
    "subtotal": Amount("{t}.subtotal", "{t}.currency"),
    "tax": Amount("{t}.tax", "{t}.currency"),
    "total": Amount("{t}.total", "{t}.currency"),
    "origin": Column(_T, "{t}.origin"),
    "createdAt": Column(_S, "{t}.created_at"),
    "updatedAt": Column(_S, "{t}.updated_at"),
    "finalizedAt": Column(_S, "{t}.finalized_at"),
    "voidedAt": Column(_S, "{t}.voided_at"),
    # The loader of accounts is scoped to the organization; the invoice's foreign
    # key (account_id, organization_id) already guarantees that.
    "account": One("Account", "accounts", "{s}.id = {t}.account_id"),
    "lines": Many("LineItem", "line_items", "{s}.invoice_id = {t}.id", "{s}.id"),
}

TYPES: dict[str, ObjectType] = {
    "Invoice": ObjectType(
        "invoices",
        {
            "id": _DOCUMENT_ID,
            **_DOCUMENT,
            "status": Column(_T, "{t}.status"),
            "documentUrl": _document_url("invoices"),
            "paidAt": Column(_S, "{t}.paid_at"),
            "amountPaid": Amount("{t}.amount_paid", "{t}.currency"),
            "creditApplied": Amount("{t}.credit_applied", "{t}.currency"),
            "balanceDue": Amount(
                "(CASE WHEN {t}.total <= 0 OR {t}.status = 'VOID' THEN 0"
                " ELSE {t}.total - {t}.amount_paid - {t}.credit_applied END)",
                "{t}.currency",
            ),
            "payments": Many("Payment", "payments", "{s}.invoice_id = {t}.id", "{s}.id"),
            "allocations": Many(
                "CreditAllocation", "credit_allocations", "{s}.invoice_id = {t}.id", "{s}.id"
            ),
        },
    ),
    "CreditNote": ObjectType(
        "invoices",
        {
            "id": _DOCUMENT_ID,
            **_DOCUMENT,
            "status": Column(_T, "coalesce({t}.credit_note_status, 'AVAILABLE')"),
            "documentUrl": _document_url("credit-notes"),
            "originalCredit": Amount("(-{t}.total)", "{t}.currency"),
            "allocatedCredit": Amount("{t}.credit_allocated", "{t}.currency"),
            "refundedCredit": Amount("{t}.credit_refunded", "{t}.currency"),
            "remainingCredit": Amount(
                "(CASE WHEN {t}.document_type <> 'CREDIT_NOTE' OR {t}.status = 'VOID' THEN 0"
                " ELSE -{t}.total - {t}.credit_allocated - {t}.credit_refunded END)",
                "{t}.currency",
            ),
            "allocations": Many(
                "CreditAllocation", "credit_allocations", "{s}.credit_note_id = {t}.id", "{s}.id"
            ),
        },
    ),
    "CreditAllocation": ObjectType(
        "credit_allocations",
        {
            "id": _ID,
            "amount": Amount("{t}.amount", None),
            "kind": Column(_T, "{t}.kind"),
            "createdAt": Column(_S, "{t}.created_at"),
            "removedAt": Column(_S, "{t}.removed_at"),
            "active": Column(_B, "({t}.removed_at IS NULL)"),
            "creditNote": One(
                "CreditNote",
                "invoices",
                "{s}.id = {t}.credit_note_id AND {s}.document_type = 'CREDIT_NOTE'",
            ),
            "invoice": One("Invoice", "invoices", "{s}.id = {t}.invoice_id"),
        },
    ),
    "Payment": ObjectType(
        "payments",
        {
            "id": _ID,
            "amount": Amount("{t}.amount", "{t}.currency"),
            "appliedAmount": Amount("{t}.applied_amount", "{t}.currency"),
            "refundedAmount": Amount("{t}.refunded_amount", "{t}.currency"),
            "refundableAmount": Amount(
                "(CASE WHEN {t}.status = 'SUCCEEDED' THEN {t}.amount - {t}.refunded_amount"
                " ELSE 0 END)",
                "{t}.currency",
            ),
            "status": Column(_T, "{t}.status"),
            "type": Column(_T, "{t}.type"),
            "method": Column(_T, "{t}.method"),
            "attempt": Column(_I, "{t}.attempt"),
            "errorCode": Column(_T, "{t}.error_code"),
            "errorMessage": Column(_T, "{t}.error_message"),
            "note": Column(_T, "{t}.note"),
            "receivedOn": Column(_D, "{t}.received_on"),
            "gatewayPaymentIntentId": Column(_T, "{t}.gateway_payment_intent_id"),
            "createdAt": Column(_S, "{t}.created_at"),
            "updatedAt": Column(_S, "{t}.updated_at"),
            "succeededAt": Column(_S, "{t}.succeeded_at"),
            "invoice": One("Invoice", "invoices", "{s}.id = {t}.invoice_id"),
            "account": One("Account", "accounts", "{s}.id = {t}.account_id"),
        },
    ),
    "LineItem": ObjectType(
        "line_items",
        {
            "id": _ID,
            "kind": Column(_T, "{t}.kind"),
            "description": Column(_T, "{t}.description"),
            "quantity": Column(_I, "{t}.quantity"),
            "unitPrice": Amount("{t}.unit_price", None),
            "amount": Amount("{t}.amount", None),
            "tax": Amount("{t}.tax", None),
            "total": Amount("{t}.total", None),
            "periodStart": Column(_D, "{t}.period_start"),
            "periodEnd": Column(_D, "{t}.period_end"),
            "createdAt": Column(_S, "{t}.created_at"),
            "invoice": One("Invoice", "invoices", "{s}.id = {t}.invoice_id"),
        },
    ),
    "Account": ObjectType(
        "accounts",
        {
            "id": _ID,
            "kind": Column(_T, "{t}.kind"),
            "name": Column(_T, "{t}.name"),
            "email": Column(_T, "{t}.email"),
            "active": Column(_B, "{t}.active"),
            "autopay": Column(_B, "{t}.autopay"),
            "hasPaymentMethod": Column(_B, "({t}.default_payment_method_id IS NOT NULL)"),
            "createdAt": Column(_S, "{t}.created_at"),
        },
    ),
}

MONEY_FIELDS = frozenset({"amount", "currency", "formatted", "__typename"})
