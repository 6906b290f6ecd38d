"""Mutations of invoice documents (rules §13): the organization's legal details."""

from __future__ import annotations

import base64
import binascii

import strawberry
from strawberry.types import Info

from resolvers import mapping
from resolvers.mutations.common import transaction
from resolvers.permissions import require_admin
from schema import inputs as i
from schema import types as t
from services import documents
from services.errors import ValidationError


def _logo(encoded: str | None) -> bytes | None:
    if encoded is None:
        return None
    try:
        # Line breaks are how many encoders wrap base64; nothing else is taken.
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(
            "logoBase64 must be the image's bytes in standard base64 (A–Z, a–z, 0–9, +, /, =)."
        ) from None


@strawberry.type
class DocumentMutations:
    @strawberry.mutation(
        description="Change the legal details on documents (a new version; documents "
        "finalized earlier keep theirs)."
    )
    async def update_document_issuer(
        self, info: Info, input: i.DocumentIssuerInput
    ) -> t.DocumentIssuer:
        require_admin(info)
        logo = _logo(input.logo_base64)
        async with transaction(info) as w:
            issuer = await documents.update_issuer(
                w.session, w.org, w.now, actor_user_id=w.actor,
                legal_name=input.legal_name, address=input.address, tax_id=input.tax_id,
                logo=logo, remove_logo=input.remove_logo,
            )  # fmt: skip
            return mapping.document_issuer(issuer)
