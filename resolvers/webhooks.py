"""Outbound webhooks over GraphQL (rules §16): admins register, change, rotate and
delete endpoints, list deliveries with their attempts, and resend one
(``services.outbound_webhooks``; the worker in ``app.webhook_sender`` sends them)."""

from __future__ import annotations

import strawberry
from sqlalchemy import select
from strawberry.types import Info

from models import WebhookAttempt as AttemptRow
from models import WebhookDelivery as DeliveryRow
from models import WebhookEndpoint as EndpointRow
from resolvers.mapping import event_cursor
from resolvers.mutations.common import transaction
from resolvers.pagination import Ordering, paginate
from resolvers.permissions import context, pk_of, require_admin
from schema import webhook_types as wt
from schema.ids import encode
from schema.pagination import Connection
from services import outbound_webhooks as hooks


def endpoint(row: EndpointRow) -> wt.WebhookEndpoint:
    return wt.WebhookEndpoint(
        id=strawberry.ID(encode("WebhookEndpoint", row.id)),
        url=row.url,
        description=row.description,
        event_types=list(row.event_types),
        status=wt.WebhookEndpointStatus(row.status),
        disabled_reason=row.disabled_reason,
        previous_secret_valid_until=row.previous_secret_expires_at if row.previous_secret else None,
        failing_since=row.failing_since,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def attempt(row: AttemptRow) -> wt.WebhookAttempt:
    return wt.WebhookAttempt(
        attempted_at=row.attempted_at,
        succeeded=row.succeeded,
        response_status=row.response_status,
        error=row.error,
        duration_ms=row.duration_ms,
    )


def delivery(row: DeliveryRow, attempts: list[AttemptRow] | None = None) -> wt.WebhookDelivery:
    return wt.WebhookDelivery(
        id=strawberry.ID(encode("WebhookDelivery", row.id)),
        endpoint_id=strawberry.ID(encode("WebhookEndpoint", row.endpoint_id)),
        event_id=strawberry.ID(encode("Event", row.event_id)),
        event_cursor=event_cursor(row.event_id),
        event_type=row.event_type,
        status=wt.WebhookDeliveryStatus(row.status),
        attempt_count=row.attempt_count,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
        attempts=[attempt(a) for a in attempts or ()],
    )


def _policy(info: Info) -> hooks.AddressPolicy:
    policy = context(info).services.get("webhook_policy")
    # Without the app's policy (a schema run outside a server) the strictest one holds.
    return policy if isinstance(policy, hooks.AddressPolicy) else hooks.AddressPolicy()


async def webhook_endpoints(info: Info) -> list[wt.WebhookEndpoint]:
    who = require_admin(info)
    async with context(info).read_sessionmaker() as session:
        return [endpoint(r) for r in await hooks.list_endpoints(session, who.organization_id)]


async def webhook_deliveries(
    info: Info,
    endpoint_id: strawberry.ID,
    status: list[wt.WebhookDeliveryStatus] | None,
    first: int | None,
    after: str | None,
) -> Connection[wt.WebhookDelivery]:
    """An endpoint's deliveries, newest first, each with its attempts (one statement
    for the page, one for all its attempts)."""
    who = require_admin(info)
    ctx = context(info)
    pk = pk_of(endpoint_id, "WebhookEndpoint", field="endpointId")
    stmt = select(DeliveryRow).where(
        DeliveryRow.organization_id == who.organization_id, DeliveryRow.endpoint_id == pk
    )
    if status:
        stmt = stmt.where(DeliveryRow.status.in_([s.value for s in status]))
    page = await paginate(
        ctx.read_sessionmaker,
        stmt,
        Ordering(keys=[DeliveryRow.id], descending=True),
        first=first,
        after=after,
        to_node=delivery,
    )
    ids = [pk_of(edge.node.id, "WebhookDelivery") for edge in page.edges]
    async with ctx.read_sessionmaker() as session:
        attempts = await hooks.attempts_of(session, who.organization_id, ids)
    for edge, pk_ in zip(page.edges, ids, strict=True):
        edge.node.attempts = [attempt(a) for a in attempts[pk_]]
    return page


@strawberry.type
class WebhookMutations:
    @strawberry.mutation(
        description="Register a webhook endpoint (ADMIN only): every event of the listed "
        "types logged from now on is POSTed to it, signed. The answer holds the signing "
        "secret, which is never shown again."
    )
    async def create_webhook_endpoint(
        self,
        info: Info,
        url: str,
        event_types: list[str],
        description: str | None = None,
    ) -> wt.WebhookEndpointWithSecret:
        require_admin(info)
        async with transaction(info) as w:
            row, secret = await hooks.create_endpoint(
                w.session, w.org, url=url, event_types=event_types, description=description,
                policy=_policy(info), now=w.now, actor_user_id=w.actor,
            )  # fmt: skip
            made = endpoint(row)
        return wt.WebhookEndpointWithSecret(endpoint=made, secret=secret)

    @strawberry.mutation(
        description="Change a webhook endpoint's URL, event types, description, or "
        "enable/disable it (ADMIN only)."
    )
    async def update_webhook_endpoint(
        self, info: Info, id: strawberry.ID, changes: wt.WebhookEndpointChanges
    ) -> wt.WebhookEndpoint:
        require_admin(info)
        pk = pk_of(id, "WebhookEndpoint")
        async with transaction(info) as w:
            row = await hooks.update_endpoint(
                w.session, w.org, pk, url=changes.url, event_types=changes.event_types,
                description=changes.description, enabled=changes.enabled,
                policy=_policy(info), now=w.now, actor_user_id=w.actor,
            )  # fmt: skip
            changed = endpoint(row)
        return changed

    @strawberry.mutation(
        description="Delete a webhook endpoint with its deliveries (ADMIN only); "
        "nothing more is sent to it. Answers the deleted endpoint's id."
    )
    async def delete_webhook_endpoint(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        require_admin(info)
        pk = pk_of(id, "WebhookEndpoint")
        async with transaction(info) as w:
            await hooks.delete_endpoint(w.session, w.org, pk, now=w.now, actor_user_id=w.actor)
        return id

    @strawberry.mutation(
        description="Give a webhook endpoint a new signing secret, shown only in this "
        "answer (ADMIN only). The previous secret keeps signing for 24 hours (requests "
        "carry a v1 signature for each), unless `expirePreviousNow` because it leaked."
    )
    async def rotate_webhook_secret(
        self, info: Info, id: strawberry.ID, expire_previous_now: bool = False
    ) -> wt.WebhookEndpointWithSecret:
        require_admin(info)
        pk = pk_of(id, "WebhookEndpoint")
        async with transaction(info) as w:
            row, secret = await hooks.rotate_secret(
                w.session, w.org, pk, now=w.now, expire_previous_now=expire_previous_now,
                actor_user_id=w.actor,
            )  # fmt: skip
            rotated = endpoint(row)
        return wt.WebhookEndpointWithSecret(endpoint=rotated, secret=secret)

    @strawberry.mutation(
        description="Send a delivery again now, whatever its status, with a fresh "
        "three-day retry window (ADMIN only)."
    )
    async def resend_webhook_delivery(self, info: Info, id: strawberry.ID) -> wt.WebhookDelivery:
        require_admin(info)
        pk = pk_of(id, "WebhookDelivery")
        async with transaction(info) as w:
            row = await hooks.resend_delivery(
                w.session, w.org, pk, now=w.now, actor_user_id=w.actor
            )
            attempts = await hooks.attempts_of(w.session, w.org.id, [row.id])
            resent = delivery(row, attempts[row.id])
        return resent
