"""E-mail notifications in the graph: the admins' list of every notification and its
delivery state, the organization's settings, a member's reminder switch, and
``sendInvoice`` (services.notifications does the work; the worker sends)."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy import Select, select
from strawberry.types import Info

from models import Notification, NotificationKind, Organization
from resolvers import mapping
from resolvers.context import Viewer
from resolvers.mutations.common import reading, transaction
from resolvers.pagination import Ordering, paginate
from resolvers.permissions import context, pk_of, require_admin, require_writer
from schema import notification_types as n
from schema import types as t
from schema.pagination import Connection
from services import notifications


def notification(row: Notification) -> n.Notification:
    return n.Notification(
        id=strawberry.ID(mapping.gid("Notification", row.id) or ""),
        kind=NotificationKind(row.kind),
        status=row.status,  # type: ignore[arg-type]  # a NotificationStatus value
        recipient=row.recipient,
        subject=row.subject,
        body_text=row.body_text,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        created_at=row.created_at,
        event_cursor=mapping.event_cursor(row.event_id),
        account_id=mapping.gid("Account", row.account_id),
        invoice_id=mapping.gid("Invoice", row.invoice_id),
        payment_id=mapping.gid("Payment", row.payment_id),
        pay_link_expires_at=row.pay_link_expires_at,
        pay_link_used_at=row.pay_link_used_at,
    )


def settings(org: Organization) -> n.NotificationSettings:
    off = notifications.kinds_off(org)
    return n.NotificationSettings(
        reminder_days=org.reminder_days,
        enabled_kinds=[k for k in NotificationKind if str(k) not in off],
        email_from=org.email_from,
        email_reply_to=org.email_reply_to,
    )


def notifications_statement(who: Viewer, flt: n.NotificationFilter | None) -> Select[Any]:
    flt = flt or n.NotificationFilter()
    where: list[Any] = [Notification.organization_id == who.organization_id]
    if flt.kinds:
        where.append(Notification.kind.in_([str(k) for k in flt.kinds]))
    if flt.statuses:
        where.append(Notification.status.in_([str(s) for s in flt.statuses]))
    if flt.account_id is not None:
        where.append(Notification.account_id == pk_of(flt.account_id, "Account", field="accountId"))
    if flt.invoice_id is not None:
        where.append(Notification.invoice_id == pk_of(flt.invoice_id, "Invoice", field="invoiceId"))
    if flt.recipient:
        where.append(Notification.recipient == flt.recipient.strip())
    return select(Notification).where(*where)


@strawberry.type
class NotificationQuery:
    @strawberry.field(
        description="Every e-mail notification, newest first, with its delivery state (ADMIN)."
    )
    async def notifications(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: n.NotificationFilter | None = None,
    ) -> Connection[n.Notification]:
        who = require_admin(info)
        return await paginate(
            context(info).read_sessionmaker,
            notifications_statement(who, filter),
            Ordering(keys=[Notification.id], descending=True),
            to_node=notification,
            first=first,
            after=after,
        )

    @strawberry.field(description="What the organization e-mails, and from where (ADMIN).")
    async def notification_settings(self, info: Info) -> n.NotificationSettings:
        require_admin(info)
        async with reading(info) as w:
            return settings(w.org)


@strawberry.type
class NotificationMutations:
    @strawberry.mutation(description="Change what the organization e-mails (ADMIN).")
    async def update_notification_settings(
        self, info: Info, input: n.NotificationSettingsInput
    ) -> n.NotificationSettings:
        require_admin(info)
        async with transaction(info) as w:
            await notifications.update_settings(
                w.session, w.org, w.now, actor_user_id=w.actor,
                reminder_days=input.reminder_days, enabled_kinds=input.enabled_kinds,
                email_from=input.email_from, email_reply_to=input.email_reply_to,
            )  # fmt: skip
            return settings(w.org)

    @strawberry.mutation(
        description="Turn upcoming-invoice reminders on or off for an account (members: "
        "their own accounts). Receipts are always sent."
    )
    async def set_invoice_reminders(
        self, info: Info, account_id: strawberry.ID, enabled: bool
    ) -> t.Account:
        require_writer(info)
        async with transaction(info) as w:
            account = await w.account(account_id)
            await notifications.set_reminders(
                w.session, w.org, account.id, enabled, w.now, actor_user_id=w.actor
            )
        return mapping.account(account)

    @strawberry.mutation(
        description="E-mail a finalized invoice to its account's billing contact now, with "
        "its pay link while it has a balance (ADMIN). The worker sends it."
    )
    async def send_invoice(self, info: Info, invoice_id: strawberry.ID) -> t.Invoice:
        require_admin(info)
        pk = pk_of(invoice_id, "Invoice", field="invoiceId")
        async with transaction(info) as w:
            invoice = await w.invoice(pk)
            await notifications.send_invoice(
                w.session, w.org, invoice.id, w.now, actor_user_id=w.actor
            )
        return mapping.invoice(invoice)
