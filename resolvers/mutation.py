"""The Mutation root, merged from one type per mutation group."""

from strawberry.tools import merge_types

from resolvers.identity import IdentityMutations
from resolvers.mutations.billing import BillingMutations
from resolvers.mutations.credit import CreditMutations
from resolvers.mutations.payments import PaymentMutations
from resolvers.webhooks import WebhookMutations

Mutation = merge_types(
    "Mutation",
    (
        BillingMutations,
        CreditMutations,
        PaymentMutations,
        IdentityMutations,
        WebhookMutations,
    ),
)
