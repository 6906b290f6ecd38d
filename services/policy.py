"""Organizations and their invoice policy (rules §3).

``create_organization`` makes a tenant; ``update_policy`` changes its settings under
the organization row lock. The billing day is fixed once any invoice exists (every
pending invoice and plan period is aligned to it); a new timezone or grace moves the
finalization instant of the invoices still pending, so they finalize by the new rule.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import AdditionalChargesPolicy, Invoice, InvoiceStatus, Organization
from services import events, money
from services.clock import organization_now, start_of_day
from services.errors import ConflictError, InvalidStateError, NotFoundError, ValidationError
from services.events import EventType
from services.locks import lock_organization

# The settings of rules §3, by their engine names, with what each must be.
POLICY_FIELDS = (
    "billing_day",
    "timezone",
    "additional_charges",
    "due_today_grace_minutes",
    "overdue_after_days",
    "auto_apply_credit",
    "credit_unused_plan_periods",
    "block_bookings_when_overdue",
    "autopay_default",
    "autopay_retry_hours",
    "default_tax_rate_ppm",
)
_BOOL_FIELDS = {
    "auto_apply_credit",
    "credit_unused_plan_periods",
    "block_bookings_when_overdue",
    "autopay_default",
}
# Upper bounds keep settings meaningful (a grace of a year is a typo, not a policy).
_INT_RANGES = {
    "billing_day": (1, 28),
    "due_today_grace_minutes": (0, 7 * 24 * 60),
    "overdue_after_days": (0, 3650),
    "autopay_retry_hours": (0, 24 * 30),
    "default_tax_rate_ppm": (0, money.PPM),
}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"“{name}” is not an IANA timezone name; use one such as Europe/London."
        ) from None
    return name


def _validated(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise ValidationError(f"Unknown policy settings: {', '.join(sorted(unknown))}.")
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if value is None:
            continue
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ValidationError(f"{name} must be true or false.")
        elif name in _INT_RANGES:
            low, high = _INT_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValidationError(f"{name} must be a whole number from {low} to {high}.")
        elif name == "timezone":
            value = validate_timezone(str(value))
        elif name == "additional_charges":
            try:
                value = AdditionalChargesPolicy(value)
            except ValueError:
                raise ValidationError(
                    "additionalCharges must be NEXT_PENDING_INVOICE or NEW_INVOICE_DUE_TODAY."
                ) from None
        clean[name] = value
    return clean


async def get_organization(session: AsyncSession, organization_id: int) -> Organization:
    org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFoundError(f"No organization {organization_id}.")
    return org


async def create_organization(
    session: AsyncSession,
    name: str,
    slug: str,
    currency: str,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    sandbox: bool = False,
    clock_start: datetime | None = None,
    **policy: Any,
) -> Organization:
    """A new tenant with its currency and, optionally, policy settings (rules §3).
    A ``sandbox`` space is one for trying things out on a test clock of its own,
    starting at ``clock_start`` (default: ``now``) (rules §9.4)."""
    if clock_start is not None and not sandbox:
        raise ValidationError(
            "Only a sandbox organization has a test clock to start; a live one goes by "
            "the wall clock (add --sandbox, or leave out --clock-start)."
        )
    if clock_start is not None and clock_start.tzinfo is None:
        raise ValidationError("The clock start needs a timezone offset, e.g. 2026-09-01T09:00Z.")
    test_clock_at = (clock_start or now).astimezone(UTC) if sandbox else None
    name = name.strip()
    if not name:
        raise ValidationError("An organization needs a name.")
    slug = slug.strip().lower()
    if not _SLUG.match(slug):
        raise ValidationError(
            "A slug is 1–80 lowercase letters, digits and dashes, starting with a letter or digit."
        )
    currency = money.validate_currency(currency)
    settings = _validated(policy)
    if await session.scalar(select(Organization.id).where(Organization.slug == slug)):
        raise ConflictError(f"The slug “{slug}” is taken; choose another.")
    org = Organization(
        name=name, slug=slug, currency=currency, sandbox=sandbox, test_clock_at=test_clock_at,
        created_at=now, **settings,
    )  # fmt: skip
    session.add(org)
    await session.flush()
    events.record(
        session,
        organization_id=org.id,
        type=EventType.POLICY_UPDATED,
        at=organization_now(now, org),
        actor_user_id=actor_user_id,
        created=True,
        sandbox=sandbox,
        test_clock_at=test_clock_at.isoformat() if test_clock_at else None,
        changes={k: str(v) if not isinstance(v, bool | int) else v for k, v in settings.items()},
    )
    return org


async def update_policy(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    actor_user_id: int | None = None,
    **changes: Any,
) -> Organization:
    """Change invoice-policy settings; ``None`` values are left as they are.

    The billing day is refused (InvalidStateError) once the organization has any
    invoice. A changed timezone re-times the finalization of pending billing-date
    invoices (start of their due date in the new zone); a changed grace re-times the
    pending due-today invoices (last change + new grace).
    """
    clean = _validated(changes)
    # The same row lock as numbering: a policy change waits for, never deadlocks with,
    # transactions that are finalizing invoices.
    org = await lock_organization(session, org.id)
    clean = {k: v for k, v in clean.items() if getattr(org, k) != v}
    if not clean:
        return org
    if "billing_day" in clean:
        has_invoice = await session.scalar(
            select(Invoice.id).where(Invoice.organization_id == org.id).limit(1)
        )
        if has_invoice is not None:
            raise InvalidStateError(
                "The billing day cannot change once invoices exist: every invoice and plan "
                "period is aligned to it."
            )
    previous = {k: getattr(org, k) for k in clean}
    for name, value in clean.items():
        setattr(org, name, value)
    org.policy_updated_at = now

    if "timezone" in clean or "due_today_grace_minutes" in clean:
        pending = await session.scalars(
            select(Invoice).where(
                Invoice.organization_id == org.id, Invoice.status == InvoiceStatus.PENDING
            )
        )
        for invoice in pending:
            if invoice.due_today:
                invoice.finalize_at = invoice.updated_at + timedelta(
                    minutes=org.due_today_grace_minutes
                )
            else:
                invoice.finalize_at = start_of_day(invoice.due_date, org.timezone)

    def plain(value: Any) -> Any:
        return value if isinstance(value, bool | int) else str(value)

    events.record(
        session,
        organization_id=org.id,
        type=EventType.POLICY_UPDATED,
        at=now,
        actor_user_id=actor_user_id,
        changes={k: plain(v) for k, v in clean.items()},
        previous={k: plain(v) for k, v in previous.items()},
    )
    await session.flush()
    return org
