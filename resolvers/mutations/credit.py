"""Mutations of credit (rules §5): apply a credit note to an invoice, remove that
allocation, move a credit line off a pending invoice, void a credit note, add custom
credit, and apply the account's available credit to an invoice. Admins only.

Every one runs through ``common.idempotent``: with an ``idempotencyKey`` a retry gets
the first call's result without moving credit twice. The work returns ids, and the
objects are read back after commit, so a first call and its replay answer alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import strawberry
from sqlalchemy import select
from strawberry.types import Info

from models import CreditAllocation, DocumentType, Invoice, LineItem
from resolvers import mapping
from resolvers.mutations.common import JSON, Work, account_pk, amount, idempotent
from resolvers.permissions import context, pk_of, require_admin, viewer
from schema import credit_inputs as ci
from schema import types as t
from services import credit, invoices
from services.errors import ValidationError

Row = TypeVar("Row", CreditAllocation, Invoice, LineItem)

IdempotencyKey = Annotated[
    str | None,
    strawberry.argument(
        description="Retries with the same key return the first result and change nothing."
    ),
]


async def _read(info: Info, model: type[Row], pks: Sequence[int]) -> dict[int, Row]:
    """Rows of this organization by id, read after the mutation committed."""
    ctx = context(info)
    who = viewer(info)
    async with ctx.read_sessionmaker() as session:
        rows = await session.scalars(
            select(model).where(
                model.id.in_(list(pks)), model.organization_id == who.organization_id
            )
        )
        return {row.id: row for row in rows}


async def _allocations(info: Info, pks: Sequence[int]) -> list[t.CreditAllocation]:
    rows = await _read(info, CreditAllocation, pks)
    currency = viewer(info).currency
    return [mapping.allocation(rows[pk], currency) for pk in pks]


async def _invoice(info: Info, pk: int) -> Invoice:
    return (await _read(info, Invoice, [pk]))[pk]


def _amount(value: Decimal, who: Any, field: str) -> int:
    minor = amount(value, who, field)
    if minor <= 0:
        raise ValidationError(f"{field} must be greater than zero.")
    return minor


@strawberry.type
class CreditMutations:
    @strawberry.mutation(
        description="Apply an amount of a credit note to an UPCOMING, DUE or OVERDUE invoice "
        "of the same account; paid in full, the invoice becomes PAID."
    )
    async def allocate_credit(
        self,
        info: Info,
        credit_note_id: strawberry.ID,
        invoice_id: strawberry.ID,
        amount: Decimal,
        idempotency_key: IdempotencyKey = None,
    ) -> t.CreditAllocation:
        who = require_admin(info)
        note_pk = pk_of(credit_note_id, "CreditNote", "Invoice", field="creditNoteId")
        invoice_pk = pk_of(invoice_id, "Invoice", "CreditNote", field="invoiceId")
        minor = _amount(amount, who, "amount")

        async def work(w: Work) -> JSON:
            allocation = await credit.allocate(
                w.session, w.org, note_pk, invoice_pk, minor, w.now, actor_user_id=w.actor
            )
            return {"allocation": allocation.id}

        request = {"creditNote": note_pk, "invoice": invoice_pk, "amount": minor}
        done = await idempotent(info, idempotency_key, "allocateCredit", request, work)
        return (await _allocations(info, [done["allocation"]]))[0]

    @strawberry.mutation(
        description="Undo an allocation: the amount returns to its credit note as unassigned "
        "credit and the invoice to its unpaid status."
    )
    async def remove_credit_allocation(
        self,
        info: Info,
        allocation_id: strawberry.ID,
        idempotency_key: IdempotencyKey = None,
    ) -> t.CreditAllocation:
        require_admin(info)
        pk = pk_of(allocation_id, "CreditAllocation", field="allocationId")

        async def work(w: Work) -> JSON:
            allocation = await credit.remove_allocation(
                w.session, w.org, pk, w.now, actor_user_id=w.actor
            )
            return {"allocation": allocation.id}

        done = await idempotent(
            info, idempotency_key, "removeCreditAllocation", {"allocation": pk}, work
        )
        return (await _allocations(info, [done["allocation"]]))[0]

    @strawberry.mutation(
        description="Move a credit line off a pending invoice onto an UPCOMING, DUE or OVERDUE "
        "invoice: it becomes a one-line credit note allocated to that invoice."
    )
    async def move_credit_line(
        self,
        info: Info,
        line_item_id: strawberry.ID,
        invoice_id: strawberry.ID,
        idempotency_key: IdempotencyKey = None,
    ) -> ci.MoveCreditLinePayload:
        require_admin(info)
        line_pk = pk_of(line_item_id, "LineItem", field="lineItemId")
        invoice_pk = pk_of(invoice_id, "Invoice", "CreditNote", field="invoiceId")

        async def work(w: Work) -> JSON:
            note, allocation = await credit.move_credit_line(
                w.session, w.org, line_pk, invoice_pk, w.now, actor_user_id=w.actor
            )
            assert note.source_invoice_id is not None
            return {
                "creditNote": note.id,
                "allocation": allocation.id,
                "source": note.source_invoice_id,
            }

        request = {"line": line_pk, "invoice": invoice_pk}
        done = await idempotent(info, idempotency_key, "moveCreditLine", request, work)
        docs = await _read(info, Invoice, [done["creditNote"], invoice_pk, done["source"]])
        return ci.MoveCreditLinePayload(
            credit_note=mapping.credit_note(docs[done["creditNote"]]),
            allocation=(await _allocations(info, [done["allocation"]]))[0],
            invoice=mapping.invoice(docs[invoice_pk]),
            source_invoice=mapping.invoice(docs[done["source"]]),
        )

    @strawberry.mutation(
        description="Void a credit note: its remaining credit is gone. Refused while any of "
        "its credit is allocated (remove those allocations first) or was refunded."
    )
    async def void_credit_note(
        self,
        info: Info,
        credit_note_id: strawberry.ID,
        idempotency_key: IdempotencyKey = None,
    ) -> t.CreditNote:
        require_admin(info)
        pk = pk_of(credit_note_id, "CreditNote", "Invoice", field="creditNoteId")

        async def work(w: Work) -> JSON:
            note = await credit.void_credit_note(w.session, w.org, pk, w.now, actor_user_id=w.actor)
            return {"creditNote": note.id}

        done = await idempotent(info, idempotency_key, "voidCreditNote", {"creditNote": pk}, work)
        return mapping.credit_note(await _invoice(info, done["creditNote"]))

    @strawberry.mutation(
        description="Custom credit: a tax-free credit line of `amount`, placed where the "
        "additional-charges policy puts charges (the next pending invoice, or a new "
        "invoice due today that finalizes into a credit note)."
    )
    async def add_credit(
        self,
        info: Info,
        account_id: strawberry.ID,
        description: str,
        amount: Decimal,
        idempotency_key: IdempotencyKey = None,
    ) -> ci.AddCreditPayload:
        who = require_admin(info)
        account_id_pk = account_pk(who, account_id)
        minor = _amount(amount, who, "amount")

        async def work(w: Work) -> JSON:
            account = await w.account(account_id)
            # Tax-free on purpose: the amount the admin types is the credit the account
            # gets, like the credit notes issue_credit_note writes.
            spec = invoices.LineSpec(
                description=description, unit_price=-minor, kind=invoices.LineKind.CREDIT,
                tax_rate_ppm=0,
            )  # fmt: skip
            line = await invoices.place_additional_charge(
                w.session, w.org, account, spec, w.now, actor_user_id=w.actor
            )
            return {"line": line.id, "invoice": line.invoice_id}

        request = {"account": account_id_pk, "description": description, "amount": minor}
        done = await idempotent(info, idempotency_key, "addCredit", request, work)
        line = (await _read(info, LineItem, [done["line"]]))[done["line"]]
        document = await _invoice(info, line.invoice_id)
        is_note = document.document_type == DocumentType.CREDIT_NOTE
        return ci.AddCreditPayload(
            line=mapping.line(line, who.currency),
            invoice=mapping.invoice(document),
            credit_note=mapping.credit_note(document) if is_note else None,
        )

    @strawberry.mutation(
        description="Pay an UPCOMING, DUE or OVERDUE invoice with the account's available "
        "credit, oldest credit note first, until it is paid or the credit runs out."
    )
    async def apply_available_credit(
        self,
        info: Info,
        invoice_id: strawberry.ID,
        idempotency_key: IdempotencyKey = None,
    ) -> ci.ApplyCreditPayload:
        require_admin(info)
        pk = pk_of(invoice_id, "Invoice", "CreditNote", field="invoiceId")

        async def work(w: Work) -> JSON:
            invoice = await w.invoice(pk)
            made = await credit.apply_available_credit(
                w.session, w.org, invoice, w.now, automatic=False, actor_user_id=w.actor
            )
            return {"allocations": [a.id for a in made]}

        done = await idempotent(
            info, idempotency_key, "applyAvailableCredit", {"invoice": pk}, work
        )
        return ci.ApplyCreditPayload(
            invoice=mapping.invoice(await _invoice(info, pk)),
            allocations=await _allocations(info, done["allocations"]),
        )
