"""API keys over GraphQL: admins create, list and revoke them (``services.apikeys``)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from models import ApiKey as ApiKeyRow
from resolvers.mutations.common import transaction
from resolvers.permissions import context, pk_of, require_admin
from schema import identity_types as it
from schema.ids import encode
from services import apikeys


def api_key(row: ApiKeyRow) -> it.ApiKey:
    return it.ApiKey(
        id=strawberry.ID(encode("ApiKey", row.id)),
        name=row.name,
        prefix=row.prefix,
        role=it.ApiKeyRole(row.role),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


async def api_keys(info: Info) -> list[it.ApiKey]:
    who = require_admin(info)
    async with context(info).read_sessionmaker() as session:
        return [api_key(row) for row in await apikeys.list_api_keys(session, who.organization_id)]


@strawberry.type
class IdentityMutations:
    @strawberry.mutation(
        description="Create an API key (ADMIN only). The answer holds the key's secret, "
        "which is never shown again; ANALYST keys only read."
    )
    async def create_api_key(self, info: Info, name: str, role: it.ApiKeyRole) -> it.CreatedApiKey:
        require_admin(info)
        async with transaction(info) as w:
            row, secret = await apikeys.create_api_key(
                w.session, w.org, name=name, role=role.value, now=w.now, actor_user_id=w.actor
            )
            created = api_key(row)
        return it.CreatedApiKey(api_key=created, key=secret)

    @strawberry.mutation(
        description="Revoke an API key (ADMIN only): its next request is refused. "
        "Revoking a revoked key changes nothing."
    )
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> it.ApiKey:
        require_admin(info)
        pk = pk_of(id, "ApiKey", field="id")
        async with transaction(info) as w:
            row = await apikeys.find_api_key(w.session, w.org, key_id=pk)
            row = await apikeys.revoke_api_key(w.session, w.org, row, w.now, actor_user_id=w.actor)
            revoked = api_key(row)
        return revoked
