"""Saved cards: the cards an account has saved at the gateway (Stripe PaymentMethods
of its customer), which one auto-pay charges, and removing one.

The gateway holds the cards; Deskbill keeps only the account's default
(``Account.default_payment_method_id``), which auto-pay and pay links use. A card is
the account's only when the gateway says it belongs to the account's customer, so an
id from another account, organization or Stripe account is refused as unknown and
changes nothing. Gateway calls happen outside any transaction; the change of default
is then one transaction with its ``account.updated`` event.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Account, Organization
from services import events
from services.errors import GatewayError, NotFoundError, ValidationError
from services.events import EventType
from services.gateway import PaymentGateway, SavedCard
from services.locks import lock_account

Sessionmaker = async_sessionmaker[AsyncSession]

# Stripe's object ids: a prefix, an underscore, letters and digits (at most 255).
_PAYMENT_METHOD_ID = re.compile(r"[a-z]{2,8}_[A-Za-z0-9_]{1,246}")


def _checked_id(payment_method: str) -> str:
    if not _PAYMENT_METHOD_ID.fullmatch(payment_method):
        raise ValidationError(
            "`paymentMethodId` must be a saved card's id as `paymentMethods` lists it "
            "(such as pm_1Nx…).",
            field="paymentMethodId",
        )
    return payment_method


async def _account(sessionmaker: Sessionmaker, org: Organization, account_id: int) -> Account:
    async with sessionmaker() as session:
        account = await session.get(Account, account_id)
    if account is None or account.organization_id != org.id:
        raise NotFoundError(f"No account {account_id} in this organization.")
    return account


async def saved_cards(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, org: Organization, account_id: int
) -> tuple[Account, list[SavedCard]]:
    """The account and its saved cards (none before it has a gateway customer)."""
    account = await _account(sessionmaker, org, account_id)
    if not account.stripe_customer_id or not gateway.enabled:
        return account, []
    return account, await gateway.list_cards(account.stripe_customer_id)


async def _own_card(gateway: PaymentGateway, account: Account, payment_method: str) -> SavedCard:
    unknown = NotFoundError(
        f"No saved card {payment_method} for {account.name!r}; list its cards with "
        "`paymentMethods` and use one of their ids."
    )
    if not account.stripe_customer_id:
        raise unknown
    try:
        card = await gateway.retrieve_card(payment_method)
    except GatewayError as refused:
        if refused.extensions.get("http_status") == 404:
            raise unknown from None
        raise
    if card.customer != account.stripe_customer_id:
        raise unknown
    return card


async def _set_default(
    sessionmaker: Sessionmaker,
    org: Organization,
    account_id: int,
    default: str | None,
    now: datetime,
    actor_user_id: int | None,
    detached: str | None = None,
) -> Account:
    async with sessionmaker() as session, session.begin():
        account = await lock_account(session, org.id, account_id)
        previous = account.default_payment_method_id
        if previous != default:
            account.default_payment_method_id = default
            events.record(
                session,
                organization_id=org.id,
                type=EventType.ACCOUNT_UPDATED,
                at=now,
                account_id=account.id,
                actor_user_id=actor_user_id,
                changes={"default_payment_method_id": default},
                previous={"default_payment_method_id": previous},
                detached=detached,
            )
        return account


async def set_default_card(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, org: Organization, account_id: int,
    payment_method: str, now: datetime, *, actor_user_id: int | None,
) -> Account:  # fmt: skip
    """Make one of the account's saved cards the one auto-pay charges."""
    payment_method = _checked_id(payment_method)
    account = await _account(sessionmaker, org, account_id)
    await _own_card(gateway, account, payment_method)
    return await _set_default(sessionmaker, org, account_id, payment_method, now, actor_user_id)


async def detach_card(
    sessionmaker: Sessionmaker, gateway: PaymentGateway, org: Organization, account_id: int,
    payment_method: str, now: datetime, *, actor_user_id: int | None,
) -> Account:  # fmt: skip
    """Remove a saved card from the account's customer at the gateway; when it was
    the default, the account has none afterwards (auto-pay then waits for a card)."""
    payment_method = _checked_id(payment_method)
    account = await _account(sessionmaker, org, account_id)
    await _own_card(gateway, account, payment_method)
    await gateway.detach_card(payment_method)
    if account.default_payment_method_id != payment_method:
        return account
    return await _set_default(
        sessionmaker, org, account_id, None, now, actor_user_id, detached=payment_method
    )
