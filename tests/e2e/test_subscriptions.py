"""Subscriptions over a real websocket against a running uvicorn, on SQLite and
PostgreSQL: a member hears its invoice get paid, members are kept to their own
accounts, the handshake guards the door, and a reconnect with the last cursor gets
exactly what was missed, in order.

Payments are recorded through the ``recordPayment`` mutation when the schema has it
(``VIA_MUTATION``); otherwise through ``services.payments.record_payment`` in a
transaction, announced as the app does after commit.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import jwt

from app.graphql import build_schema
from schema.ids import encode
from services import money
from services.payments import record_payment
from services.policy import get_organization
from tests.api import conftest as api_fixtures
from tests.api.conftest import Api
from tests.e2e import GUARD, GraphQLWS
from tests.world import NOW, World

# The API fixtures (a uvicorn on SQLite and on PostgreSQL, and the world in it).
api = api_fixtures.api
world = api_fixtures.world

VIA_MUTATION = "recordPayment" in build_schema().as_str()

INVOICE_STATUS = """
subscription ($invoiceId: ID, $accountId: ID, $after: String) {
  invoiceStatusChanged(invoiceId: $invoiceId, accountId: $accountId, after: $after) {
    cursor type status previousStatus
    event { cursor sequence invoiceId }
    invoice { id status balanceDue { amount } }
  }
}"""

PAYMENT_STATUS = """
subscription ($invoiceId: ID, $paymentId: ID, $after: String) {
  paymentStatusChanged(invoiceId: $invoiceId, paymentId: $paymentId, after: $after) {
    cursor type status
    payment { id status amount { amount } }
    invoice { id }
  }
}"""

EVENTS = """
subscription ($after: String, $filter: EventFilter) {
  events(after: $after, filter: $filter) { cursor type accountId invoiceId paymentId }
}"""

RECORD_PAYMENT = """
mutation ($input: RecordPaymentInput!) {
  recordPayment(input: $input) { id status }
}"""


def gid(type_name: str, pk: int) -> str:
    return encode(type_name, pk)


async def listening(api: Api, world: World, count: int) -> None:
    """Wait until the server's hub has ``count`` subscriptions for the organization.

    graphql-transport-ws acknowledges no subscription, so a client that subscribes
    without ``after`` can only know it is listening by asking the server.
    """
    hub = api.state.services["hub"]
    async with asyncio.timeout(GUARD):
        while len(hub.subscription_cursors(world.ids["org"])) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def balance_due(api: Api, world: World, invoice: str) -> str:
    body = await api.gql(
        "query ($id: ID!) { node(id: $id) { ... on Invoice { balanceDue { amount } } } }",
        {"id": gid("Invoice", world.ids[invoice])},
        token=world.tokens["admin"],
    )
    amount: str = body["data"]["node"]["balanceDue"]["amount"]
    return amount


async def record_payment_as_admin(api: Api, world: World, invoice: str, amount: str) -> str:
    """An admin records a cash payment; the payment's global id.

    Through the ``recordPayment`` mutation when it exists, else through the service
    and the app's announcement, which is exactly what the mutation does.
    """
    if VIA_MUTATION:
        body = await api.gql(
            RECORD_PAYMENT,
            {
                "input": {
                    "invoiceId": gid("Invoice", world.ids[invoice]),
                    "amount": amount,
                    "method": "CASH",
                }
            },
            token=world.tokens["admin"],
        )
        assert "errors" not in body, body
        payment_id: str = body["data"]["recordPayment"]["id"]
        return payment_id
    async with api.state.sessionmaker.begin() as session:
        org = await get_organization(session, world.ids["org"])
        payment = await record_payment(
            session, org, world.ids[invoice], money.parse(Decimal(amount), org.currency),
            "CASH", NOW, actor_user_id=world.ids["admin"],
        )  # fmt: skip
        await session.flush()
        newest = max(e.id for e in session.info["events"])
    await api.state.announce(world.ids["org"], newest)
    return gid("Payment", payment.id)


async def test_member_hears_its_invoice_paid_and_the_payment_confirmed(
    api: Api, world: World
) -> None:
    alice_due = gid("Invoice", world.ids["due"])
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        statuses = await alice.subscribe(INVOICE_STATUS, {"invoiceId": alice_due})
        payments = await alice.subscribe(PAYMENT_STATUS, {"invoiceId": alice_due})
        await listening(api, world, 2)

        owed = await balance_due(api, world, "due")
        payment_id = await record_payment_as_admin(api, world, "due", owed)

        confirmed = (await alice.results(payments, 1))[0]["paymentStatusChanged"]
        assert confirmed["type"] == "payment.created"
        assert confirmed["status"] == "SUCCEEDED"
        assert confirmed["payment"] == {
            "id": payment_id, "status": "SUCCEEDED", "amount": {"amount": owed},
        }  # fmt: skip
        assert confirmed["invoice"] == {"id": alice_due}

        changed, paid = [r["invoiceStatusChanged"] for r in await alice.results(statuses, 2)]
        assert (changed["type"], changed["previousStatus"], changed["status"]) == (
            "invoice.status_changed", "DUE", "PAID",
        )  # fmt: skip
        assert (paid["type"], paid["status"]) == ("invoice.paid", "PAID")
        assert changed["invoice"] == {"id": alice_due, "status": "PAID",
                                      "balanceDue": {"amount": "0.00"}}  # fmt: skip
        # Every message carries its cursor, the event's own, in log order.
        assert changed["cursor"] == changed["event"]["cursor"] == str(changed["event"]["sequence"])
        assert int(confirmed["cursor"]) < int(changed["cursor"]) < int(paid["cursor"])
        assert await alice.quiet(statuses) == []


async def test_a_member_cannot_watch_someone_elses_invoice_account_or_payment(
    api: Api, world: World
) -> None:
    async with GraphQLWS.connect(api.url, world.tokens["bob"]) as bob:
        refused = {
            "NOT_FOUND": [
                (INVOICE_STATUS, {"invoiceId": gid("Invoice", world.ids["due"])}),
                (PAYMENT_STATUS, {"paymentId": gid("Payment", world.ids["cash"])}),
                # Another organization's invoice reads as absent, not as forbidden.
                (INVOICE_STATUS, {"invoiceId": gid("Invoice", world.ids["rival_invoice"])}),
            ],
            "FORBIDDEN": [
                (INVOICE_STATUS, {"accountId": gid("Account", world.ids["alice_account"])}),
                (EVENTS, {"filter": {"accountId": gid("Account", world.ids["team"])}}),
            ],
            "VALIDATION": [(INVOICE_STATUS, {"after": "not-a-cursor"})],
        }
        for code, attempts in refused.items():
            for query, variables in attempts:
                operation = await bob.subscribe(query, variables)
                message = await bob.message(operation)
                # Refused before anything streams: the operation's `error` message.
                assert message["type"] == "error", message
                assert [e["extensions"]["code"] for e in message["payload"]] == [code]

        # The connection stays usable: his own invoice is his to watch.
        own = await bob.subscribe(
            INVOICE_STATUS, {"invoiceId": gid("Invoice", world.ids["bob_invoice"])}
        )
        await listening(api, world, 1)
        assert await bob.quiet(own, 0.3) == []


async def test_a_member_without_a_filter_hears_only_its_own_accounts(
    api: Api, world: World
) -> None:
    async with (
        GraphQLWS.connect(api.url, world.tokens["bob"]) as bob,
        GraphQLWS.connect(api.url, world.tokens["admin"]) as admin,
    ):
        bob_events = await bob.subscribe(EVENTS)
        bob_payments = await bob.subscribe(PAYMENT_STATUS)
        admin_payments = await admin.subscribe(EVENTS, {"filter": {"types": ["payment.created"]}})
        await listening(api, world, 3)

        alices = await record_payment_as_admin(api, world, "due", "1.00")
        bobs = await record_payment_as_admin(api, world, "bob_invoice", "2.00")

        # Alice's events come first in the log; bob's stream skipped them.
        (created,) = await bob.results(bob_payments, 1)
        assert created["paymentStatusChanged"]["payment"]["id"] == bobs
        seen = await bob.results(bob_events, 1)
        seen += [m["payload"]["data"] for m in await bob.quiet(bob_events)]
        assert {e["events"]["accountId"] for e in seen} == {
            gid("Account", world.ids["bob_account"])
        }
        assert await bob.quiet(bob_payments) == []

        both = [r["events"]["paymentId"] for r in await admin.results(admin_payments, 2)]
        assert both == [alices, bobs]


async def test_subscribing_before_connection_init_is_refused_with_4401(api: Api) -> None:
    async with GraphQLWS.connect(api.url, init=False) as anonymous:
        await anonymous.subscribe(EVENTS)
        closed = await anonymous.closed()
    assert closed.code == 4401


async def test_a_bad_or_missing_token_in_connection_init_closes_with_4403(
    api: Api, world: World
) -> None:
    # Alice's own claims, signed with a secret the server does not know.
    claims = jwt.decode(world.tokens["alice"], options={"verify_signature": False})
    forged = jwt.encode(claims, "a-secret-the-server-never-saw-0123456789", algorithm="HS256")
    for payload in ({"authorization": f"Bearer {forged}"}, {"authorization": "Bearer nope"}, {}):
        async with GraphQLWS.connect(api.url, init=False) as client:
            await client._send({"type": "connection_init", "payload": payload})
            closed = await client.closed()
        assert closed.code == 4403, payload


async def test_reconnecting_with_the_last_cursor_delivers_exactly_what_was_missed(
    api: Api, world: World
) -> None:
    variables = {"invoiceId": gid("Invoice", world.ids["due"])}
    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        operation = await alice.subscribe(PAYMENT_STATUS, variables)
        await listening(api, world, 1)
        await record_payment_as_admin(api, world, "due", "0.10")
        (first,) = await alice.results(operation, 1)
    last = first["paymentStatusChanged"]["cursor"]

    missed = [await record_payment_as_admin(api, world, "due", f"0.{n}1") for n in (2, 3, 4)]

    async with GraphQLWS.connect(api.url, world.tokens["alice"]) as alice:
        operation = await alice.subscribe(PAYMENT_STATUS, {**variables, "after": last})
        replayed = [r["paymentStatusChanged"] for r in await alice.results(operation, 3)]
        assert [r["payment"]["id"] for r in replayed] == missed
        assert [r["payment"]["amount"]["amount"] for r in replayed] == ["0.21", "0.31", "0.41"]
        assert sorted(cursors_of := [int(r["cursor"]) for r in replayed]) == cursors_of
        assert cursors_of[0] > int(last)
        assert await alice.quiet(operation) == []  # none twice

        # Replay hands over to live delivery without a seam.
        live = await record_payment_as_admin(api, world, "due", "0.51")
        (after,) = await alice.results(operation, 1)
        assert after["paymentStatusChanged"]["payment"]["id"] == live
        assert int(after["paymentStatusChanged"]["cursor"]) > cursors_of[-1]
