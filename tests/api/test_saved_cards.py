"""Saved cards over HTTP (SQLite and PostgreSQL), through the real ``stripe`` library
against the fake Stripe: a member lists their cards, makes another one the default,
and the next auto-pay charges it; a card is detached; and every refusal — another
member's account, another customer's card, an unknown or malformed id, an analyst
changing anything — changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import issue_token
from models import Account, Event, Organization, Role, User
from schema.ids import decode
from services import accounts
from services.clock import FixedClock
from tests.api.test_payments_api import Desk, _desk
from tests.fakestripe import FakeStripe

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)

CARDS = """query($id: ID!) { paymentMethods(accountId: $id) {
  id brand last4 expMonth expYear isDefault } }"""
SET_DEFAULT = """mutation($id: ID!, $card: ID!) {
  setDefaultPaymentMethod(accountId: $id, paymentMethodId: $card) { hasPaymentMethod } }"""
DETACH = """mutation($id: ID!, $card: ID!) {
  detachPaymentMethod(accountId: $id, paymentMethodId: $card) { hasPaymentMethod } }"""


@pytest.fixture
async def desk(engine: AsyncEngine, clock: FixedClock) -> AsyncIterator[Desk]:
    with FakeStripe(clock=lambda: clock.now().timestamp()) as fake:
        async for desk in _desk(engine, clock, fake):
            yield desk


async def _save_another(desk: Desk, account_id: str, card: str, who: str) -> None:
    """The card sheet again, for an account that already has a default card."""
    data = await desk.ok(
        "mutation($id: ID!) { startCardSetup(accountId: $id) { clientSecret } }",
        {"id": account_id},
        who=who,
    )
    setup_intent = data["startCardSetup"]["clientSecret"].split("_secret_")[0]
    desk.stripe.confirm_setup(setup_intent, card)
    await desk.deliver_for(setup_intent)


async def _default(desk: Desk, account_id: str) -> str | None:
    decoded = decode(account_id)
    assert decoded is not None
    async with desk.api.state.sessionmaker() as session:
        account = await session.get(Account, decoded[1])
        assert account is not None
        return account.default_payment_method_id


async def test_a_member_changes_the_default_card_and_auto_pay_charges_it(desk: Desk) -> None:
    _, ada = await desk.member("Ada")
    await desk.save_card(ada, "pm_card_visa", who="Ada")
    await _save_another(desk, ada, "pm_card_mastercard", "Ada")
    listed = (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"]
    assert listed == [
        {"id": "pm_card_visa", "brand": "visa", "last4": "4242", "expMonth": 12,
         "expYear": 2034, "isDefault": True},
        {"id": "pm_card_mastercard", "brand": "mastercard", "last4": "4444", "expMonth": 12,
         "expYear": 2034, "isDefault": False},
    ]  # fmt: skip
    # Admins and analysts read any account's cards.
    assert (await desk.ok(CARDS, {"id": ada}))["paymentMethods"] == listed

    changed = await desk.ok(SET_DEFAULT, {"id": ada, "card": "pm_card_mastercard"}, who="Ada")
    assert changed["setDefaultPaymentMethod"] == {"hasPaymentMethod": True}
    listed = (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"]
    assert [(c["id"], c["isDefault"]) for c in listed] == [
        ("pm_card_mastercard", True), ("pm_card_visa", False),
    ]  # fmt: skip
    async with desk.api.state.sessionmaker() as session:
        changes = [
            e.payload
            for e in await session.scalars(select(Event).where(Event.type == "account.updated"))
        ]
    assert {"changes": {"default_payment_method_id": "pm_card_mastercard"},
            "previous": {"default_payment_method_id": "pm_card_visa"},
            "detached": None} in changes  # fmt: skip
    again = await desk.ok(SET_DEFAULT, {"id": ada, "card": "pm_card_mastercard"}, who="Ada")
    assert again == changed  # the same choice twice: no change, no second event

    # Auto-pay charges the new default.
    await desk.ok(
        "mutation($id: ID!) { setAutopay(accountId: $id, enabled: true) { autopay } }",
        {"id": ada},
    )
    await desk.invoice(ada, "120.00")
    await desk.ok("mutation { runBilling { accountsProcessed } }")
    intents = list(desk.stripe.snapshot()["payment_intents"].values())
    assert [(i["amount"], i["payment_method"]) for i in intents] == [(12000, "pm_card_mastercard")]


async def test_detaching_a_card_and_the_default(desk: Desk) -> None:
    _, ada = await desk.member("Ada")
    await desk.save_card(ada, "pm_card_visa", who="Ada")
    await _save_another(desk, ada, "pm_card_amex", "Ada")
    kept = await desk.ok(DETACH, {"id": ada, "card": "pm_card_amex"}, who="Ada")
    assert kept["detachPaymentMethod"] == {"hasPaymentMethod": True}  # the default stays
    listed = (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"]
    assert [c["id"] for c in listed] == ["pm_card_visa"]
    gone = await desk.ok(DETACH, {"id": ada, "card": "pm_card_visa"})  # an admin may too
    assert gone["detachPaymentMethod"] == {"hasPaymentMethod": False}
    assert (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"] == []
    assert await _default(desk, ada) is None
    # Detached means unknown from then on.
    refused = await desk.refused(DETACH, {"id": ada, "card": "pm_card_visa"}, who="Ada")
    assert refused["extensions"]["code"] == "NOT_FOUND"


async def _refusals(desk: Desk, cases: list[tuple[str, dict[str, Any], str, str]]) -> None:
    for query, variables, who, code in cases:
        refused = await desk.refused(query, variables, who=who)
        assert refused["extensions"]["code"] == code, (variables, who, refused)
        assert refused["message"].endswith(".") and len(refused["message"]) > 20


async def test_refusals_change_nothing(desk: Desk) -> None:
    _, ada = await desk.member("Ada")
    _, bob = await desk.member("Bob")
    await desk.save_card(ada, "pm_card_visa", who="Ada")
    await desk.save_card(bob, "pm_card_mastercard", who="Bob")
    async with desk.api.state.sessionmaker.begin() as session:
        admin = await session.scalar(select(User).where(User.email == "admin@harbour.test"))
        assert admin is not None
        org = await session.get(Organization, admin.organization_id)
        assert org is not None
        analyst = await accounts.create_user(
            session, org, email="ann@harbour.test", name="Ann", role=Role.ANALYST,
            now=desk.clock.now(),
        )  # fmt: skip
    desk.tokens["analyst"] = issue_token(desk.settings, analyst, desk.clock.now())
    before = (await _default(desk, ada), await _default(desk, bob))
    intents = len(desk.stripe.snapshot()["payment_intents"])
    await _refusals(desk, [
        (CARDS, {"id": bob}, "Ada", "FORBIDDEN"),  # another member's account
        (SET_DEFAULT, {"id": bob, "card": "pm_card_visa"}, "Ada", "FORBIDDEN"),
        # Bob's card is not Ada's, even for an admin.
        (SET_DEFAULT, {"id": ada, "card": "pm_card_mastercard"}, "admin", "NOT_FOUND"),
        (DETACH, {"id": ada, "card": "pm_card_mastercard"}, "Ada", "NOT_FOUND"),
        (SET_DEFAULT, {"id": ada, "card": "pm_card_amex"}, "Ada", "NOT_FOUND"),  # never saved
        (SET_DEFAULT, {"id": ada, "card": "pm_nope"}, "Ada", "NOT_FOUND"),  # unknown at Stripe
        (SET_DEFAULT, {"id": ada, "card": "card; DROP"}, "Ada", "VALIDATION"),
        (SET_DEFAULT, {"id": ada, "card": "pm_" + "x" * 300}, "Ada", "VALIDATION"),
        (SET_DEFAULT, {"id": "nope", "card": "pm_card_visa"}, "Ada", "VALIDATION"),
        (SET_DEFAULT, {"id": ada, "card": "pm_card_visa"}, "analyst", "FORBIDDEN"),
        (DETACH, {"id": ada, "card": "pm_card_visa"}, "analyst", "FORBIDDEN"),
    ])  # fmt: skip
    assert (await _default(desk, ada), await _default(desk, bob)) == before
    assert len(desk.stripe.snapshot()["payment_intents"]) == intents
    assert desk.stripe.snapshot()["payment_methods"]["pm_card_mastercard"]["customer"]
    # The analyst reads cards.
    listed = (await desk.ok(CARDS, {"id": bob}, who="analyst"))["paymentMethods"]
    assert [c["id"] for c in listed] == ["pm_card_mastercard"]


async def test_an_account_without_a_customer_has_no_cards(desk: Desk) -> None:
    _, ada = await desk.member("Ada")
    assert (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"] == []
    refused = await desk.refused(SET_DEFAULT, {"id": ada, "card": "pm_card_visa"}, who="Ada")
    assert refused["extensions"]["code"] == "NOT_FOUND"


async def test_listing_cards_costs_the_same_statements_for_one_card_and_for_three(
    desk: Desk,
) -> None:
    _, ada = await desk.member("Ada")
    await desk.save_card(ada, "pm_card_visa", who="Ada")
    counts = []
    for more in ([], ["pm_card_mastercard", "pm_card_amex"]):
        for card in more:
            await _save_another(desk, ada, card, "Ada")
        seen = desk.api.count_selects()
        listed = (await desk.ok(CARDS, {"id": ada}, who="Ada"))["paymentMethods"]
        desk.api.stop_counting()
        counts.append(len(seen))
        assert len(listed) == 1 + len(more)
    # The viewer, the organization, the account: the cards themselves come from Stripe.
    assert counts == [3, 3]
