"""One document, one id: a draft that finalizes as a credit note keeps its global id,
``node`` answers its current type, and ``updatedAt`` tells a client it changed — so a
normalized client cache (Apollo's or Relay's, keyed by id) holds one entry for it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.api.test_credit_api import Ledger, desk, ledger  # noqa: F401 (fixtures)
from tests.api.test_credit_seed_examples import Desk

NODE = """query($id: ID!) { node(id: $id) { __typename id
  ... on Invoice { number status updatedAt }
  ... on CreditNote { number noteStatus: status updatedAt remainingCredit { amount } } } }"""
FINALIZE = """mutation($i: ID!) { finalizeInvoice(invoiceId: $i, applyCredit: false) {
  __typename id number updatedAt } }"""
CREDIT_NOTES = "{ creditNotes { nodes { __typename id number updatedAt } } }"


class NormalizedCache:
    """What Apollo's InMemoryCache (with ``dataIdFromObject = o => o.id``) or Relay's
    store does with a response: every object with an id becomes one entry, merged."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def write(self, value: Any) -> None:
        if isinstance(value, dict):
            if "id" in value:
                self.entries.setdefault(value["id"], {}).update(
                    {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
                )
            for child in value.values():
                self.write(child)
        elif isinstance(value, list):
            for child in value:
                self.write(child)


async def test_a_draft_finalized_as_a_credit_note_keeps_its_id(
    desk: Desk,  # noqa: F811
    ledger: Ledger,  # noqa: F811
) -> None:
    cache = NormalizedCache()
    before = (await desk.ok(NODE, {"id": ledger.pending}))["node"]
    cache.write(before)
    assert (before["__typename"], before["number"], before["status"]) == (
        "Invoice", None, "PENDING"
    )  # fmt: skip

    desk.clock.set(desk.clock.now() + timedelta(minutes=5))
    finalized = (await desk.ok(FINALIZE, {"i": ledger.pending}))["finalizeInvoice"]
    cache.write(finalized)
    after = (await desk.ok(NODE, {"id": ledger.pending}))["node"]
    cache.write(after)
    listed = (await desk.ok(CREDIT_NOTES))["creditNotes"]["nodes"]
    cache.write(listed)

    assert finalized["id"] == after["id"] == before["id"] == ledger.pending
    assert after["__typename"] == "CreditNote"
    assert after["number"] == "CN-000002"
    assert after["remainingCredit"] == {"amount": "20.00"}
    assert ledger.pending in [note["id"] for note in listed]
    # The cache holds one entry for the document, now a credit note with its number.
    entry = cache.entries[ledger.pending]
    assert (entry["__typename"], entry["number"]) == ("CreditNote", "CN-000002")
    assert len([e for e in cache.entries.values() if e.get("number") == "CN-000002"]) == 1
    assert after["updatedAt"] > before["updatedAt"]


async def test_an_id_minted_as_credit_note_still_resolves(
    desk: Desk,  # noqa: F811
    ledger: Ledger,  # noqa: F811
) -> None:
    """Ids handed out before ids were stable (``CreditNote:<pk>``) keep working."""
    from schema.ids import decode, encode

    decoded = decode(ledger.note)
    assert decoded is not None
    old_style = encode("CreditNote", decoded[1])
    found = (await desk.ok(NODE, {"id": old_style}))["node"]
    assert (found["__typename"], found["id"], found["number"]) == (
        "CreditNote", ledger.note, "CN-000001"
    )  # fmt: skip
