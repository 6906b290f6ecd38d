"""The saved cards of an account (``paymentMethods``), read from the gateway: Stripe
holds the cards, Deskbill only which one is the default (services/cards.py)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from resolvers.mutations.common import account_pk, reading
from resolvers.mutations.payments import gateway_of
from resolvers.permissions import context, viewer
from schema import payment_inputs as p
from services import cards


@strawberry.type
class CardQuery:
    @strawberry.field(
        description="The cards saved at Stripe for an account, the default first (members: "
        "their own accounts; admins and analysts: any account of the organization)."
    )
    async def payment_methods(self, info: Info, account_id: strawberry.ID) -> list[p.SavedCard]:
        who = viewer(info)
        pk = account_pk(who, account_id)
        async with reading(info) as w:
            org = w.org
        account, saved = await cards.saved_cards(
            context(info).read_sessionmaker, gateway_of(info, org), org, pk
        )
        default = account.default_payment_method_id
        listed = [
            p.SavedCard(
                id=strawberry.ID(card.id),
                brand=card.brand,
                last4=card.last4,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                is_default=card.id == default,
            )
            for card in saved
        ]
        return sorted(listed, key=lambda card: not card.is_default)
