"""A small, fully consistent billing world built from rows, for read-side tests:
two organizations, each role, a team, invoices in several states, a credit note with
part of it applied, card and cash payments and a refund.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import issue_token
from app.settings import Settings
from models import (
    Account,
    CreditAllocation,
    Invoice,
    LineItem,
    Organization,
    Payment,
    Refund,
    TeamMembership,
    User,
)
from services import money

NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)


@dataclass
class World:
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)


def _invoice(org: Organization, account: Account, **kw: object) -> Invoice:
    base: dict[str, object] = {
        "organization_id": org.id,
        "account_id": account.id,
        "currency": org.currency,
        "created_at": NOW,
        "updated_at": NOW,
        "due_date": date(2026, 8, 1),
    }
    base.update(kw)
    return Invoice(**base)


def _line(org: Organization, invoice: Invoice, description: str, unit: int, qty: int = 1,
          tax_ppm: int = 0, kind: str = "CHARGE") -> LineItem:  # fmt: skip
    amount = unit * qty
    tax = money.tax(amount, tax_ppm)
    return LineItem(
        organization_id=org.id, invoice_id=invoice.id, kind=kind, description=description,
        quantity=qty, unit_price=unit, amount=amount, tax_rate_ppm=tax_ppm, tax=tax,
        total=amount + tax, created_at=NOW,
    )  # fmt: skip


async def _finalized(
    s: AsyncSession, org: Organization, account: Account, number: str, lines: list[tuple[str, int]],
    *, status: str, tax_ppm: int = 0, paid: int = 0, credit: int = 0, due: date = date(2026, 8, 1),
) -> Invoice:  # fmt: skip
    inv = _invoice(
        org, account, number=number, status=status, document_type="INVOICE",
        issue_date=due, due_date=due, finalized_at=NOW,
    )  # fmt: skip
    s.add(inv)
    await s.flush()
    items = [_line(org, inv, d, u, tax_ppm=tax_ppm) for d, u in lines]
    s.add_all(items)
    inv.subtotal = sum(i.amount for i in items)
    inv.tax = sum(i.tax for i in items)
    inv.total = inv.subtotal + inv.tax
    inv.amount_paid = paid
    inv.credit_applied = credit
    if status == "PAID":
        inv.paid_at = NOW
    await s.flush()
    return inv


async def build_world(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> World:
    world = World(settings=settings)
    async with sessionmaker.begin() as s:
        orgs = []
        for slug in ("harbour", "rival"):
            org = Organization(name=slug.title() + " Works", slug=slug, currency="USD",
                               created_at=NOW)  # fmt: skip
            s.add(org)
            orgs.append(org)
        await s.flush()
        org, rival = orgs

        def user(o: Organization, email: str, role: str) -> User:
            u = User(organization_id=o.id, email=email, name=email.split("@")[0].title(),
                     role=role, created_at=NOW)  # fmt: skip
            s.add(u)
            return u

        admin = user(org, "admin@harbour.test", "ADMIN")
        analyst = user(org, "analyst@harbour.test", "ANALYST")
        alice = user(org, "alice@harbour.test", "MEMBER")
        bob = user(org, "bob@harbour.test", "MEMBER")
        rival_admin = user(rival, "admin@rival.test", "ADMIN")
        mallory = user(rival, "mallory@rival.test", "MEMBER")
        await s.flush()

        def account(o: Organization, name: str, owner: User | None) -> Account:
            a = Account(organization_id=o.id, kind="USER" if owner else "TEAM", name=name,
                        user_id=owner.id if owner else None, created_at=NOW)  # fmt: skip
            s.add(a)
            return a

        alice_acc = account(org, "Alice", alice)
        bob_acc = account(org, "Bob", bob)
        team = account(org, "Acme Studio", None)
        mallory_acc = account(rival, "Mallory", mallory)
        await s.flush()
        s.add(TeamMembership(organization_id=org.id, team_account_id=team.id, user_id=alice.id,
                             created_at=NOW))  # fmt: skip

        paid = await _finalized(s, org, alice_acc, "INV-000001", [("Hot desk, August", 20000)],
                                status="PAID", paid=20000)  # fmt: skip
        card = Payment(
            organization_id=org.id, account_id=alice_acc.id, invoice_id=paid.id, amount=20000,
            applied_amount=20000, refunded_amount=2500, currency="USD", status="SUCCEEDED",
            type="MANUAL", method="CARD", gateway_payment_intent_id="pi_world_1",
            created_at=NOW, updated_at=NOW, succeeded_at=NOW,
        )  # fmt: skip
        s.add(card)
        due = await _finalized(s, org, alice_acc, "INV-000002",
                               [("Meeting room", 5000), ("Coffee", 1234)],
                               status="DUE", tax_ppm=82_500, paid=1000, credit=1500)  # fmt: skip
        cash = Payment(
            organization_id=org.id, account_id=alice_acc.id, invoice_id=due.id, amount=1000,
            applied_amount=1000, currency="USD", status="SUCCEEDED", type="MANUAL",
            method="CASH", created_at=NOW, updated_at=NOW, succeeded_at=NOW,
        )  # fmt: skip
        s.add(cash)
        note = _invoice(
            org, alice_acc, number="CN-000001", status="PAID", document_type="CREDIT_NOTE",
            credit_note_status="AVAILABLE", issue_date=date(2026, 8, 2), finalized_at=NOW,
            origin="REFUND", credit_allocated=1500, credit_refunded=2500,
            subtotal=-5000, total=-5000,
        )  # fmt: skip
        s.add(note)
        await s.flush()
        s.add(_line(org, note, "Refund of payment", -5000, kind="CREDIT"))
        s.add(CreditAllocation(
            organization_id=org.id, account_id=alice_acc.id, credit_note_id=note.id,
            invoice_id=due.id, amount=1500, kind="MANUAL", created_by_user_id=admin.id,
            created_at=NOW,
        ))  # fmt: skip
        s.add(Refund(
            organization_id=org.id, account_id=alice_acc.id, credit_note_id=note.id,
            payment_id=card.id, amount=2500, currency="USD", status="SUCCEEDED", method="CARD",
            reason="Room closed", created_at=NOW, updated_at=NOW,
        ))  # fmt: skip
        team_inv = await _finalized(s, org, team, "INV-000003", [("Team office", 90000)],
                                    status="OVERDUE", due=date(2026, 7, 1))  # fmt: skip
        bob_inv = await _finalized(s, org, bob_acc, "INV-000004", [("Day pass", 2500)],
                                   status="UPCOMING", due=date(2026, 9, 1))  # fmt: skip
        pending = _invoice(org, bob_acc, status="PENDING", document_type="DRAFT",
                           due_date=date(2026, 9, 1))  # fmt: skip
        s.add(pending)
        rival_inv = await _finalized(s, rival, mallory_acc, "INV-000001", [("Rival desk", 7000)],
                                     status="DUE")  # fmt: skip
        org.next_invoice_number = 5
        org.next_credit_note_number = 2
        await s.flush()

        world.ids.update(
            org=org.id, rival=rival.id, alice_account=alice_acc.id, bob_account=bob_acc.id,
            team=team.id, mallory_account=mallory_acc.id, paid=paid.id, due=due.id,
            credit_note=note.id, team_invoice=team_inv.id, bob_invoice=bob_inv.id,
            pending=pending.id, rival_invoice=rival_inv.id, card=card.id, cash=cash.id,
            alice=alice.id, admin=admin.id,
        )  # fmt: skip
        for name, u in {
            "admin": admin, "analyst": analyst, "alice": alice, "bob": bob,
            "rival_admin": rival_admin, "mallory": mallory,
        }.items():  # fmt: skip
            world.tokens[name] = issue_token(settings, u, NOW)
    return world


async def add_many_invoices(
    sessionmaker: async_sessionmaker[AsyncSession], world: World, *, count: int
) -> None:
    """``count`` more finalized invoices for the first org, each with two lines and a
    payment, spread over its accounts (for statement-count and speed checks)."""
    async with sessionmaker.begin() as s:
        org = await s.get(Organization, world.ids["org"])
        assert org is not None
        accounts = [
            await s.get(Account, world.ids[k]) for k in ("alice_account", "bob_account", "team")
        ]
        for i in range(count):
            acc = accounts[i % len(accounts)]
            assert acc is not None
            inv = await _finalized(
                s, org, acc, f"INV-{100 + i:06d}", [("Desk", 10000 + i), ("Locker", 500)],
                status="DUE", paid=500,
            )  # fmt: skip
            s.add(Payment(
                organization_id=org.id, account_id=acc.id, invoice_id=inv.id, amount=500,
                applied_amount=500, currency="USD", status="SUCCEEDED", type="MANUAL",
                method="CASH", created_at=NOW, updated_at=NOW, succeeded_at=NOW,
            ))  # fmt: skip
