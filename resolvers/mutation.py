"""The Mutation root, merged from one type per mutation group."""

from strawberry.tools import merge_types

from resolvers.identity import IdentityMutations
from resolvers.mutations.billing import BillingMutations
from resolvers.mutations.credit import CreditMutations
from resolvers.mutations.documents import DocumentMutations
from resolvers.mutations.payments import PaymentMutations
from resolvers.notifications import NotificationMutations
from resolvers.webhooks import WebhookMutations

_GROUPS = (
    BillingMutations,
    CreditMutations,
    PaymentMutations,
    IdentityMutations,
    WebhookMutations,
    DocumentMutations,
    NotificationMutations,
)
Mutation = merge_types("Mutation", _GROUPS)
