"""API keys in the graph: what an admin sees of a key, and the one answer that
carries its secret."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry


@strawberry.enum(description="What an API key may do: ANALYST reads, ADMIN administers.")
class ApiKeyRole(Enum):
    ANALYST = "ANALYST"
    ADMIN = "ADMIN"


@strawberry.type(description="A key for a BI tool or an integration; its secret is not shown.")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="The public start of the key, to tell keys apart.")
    role: ApiKeyRole
    created_at: datetime
    last_used_at: datetime | None = strawberry.field(
        description="When the key was last used, to the minute."
    )
    revoked_at: datetime | None


@strawberry.type(description="A new API key with its secret, which is shown only this once.")
class CreatedApiKey:
    api_key: ApiKey
    key: str = strawberry.field(
        description="The whole key: send it as `Authorization: Bearer <key>`. Keep it now."
    )
