"""The provisioning commands of ``deskbill``: ``org create``, ``org list``,
``token issue``, ``apikey create`` and ``apikey revoke``.

Each runs in one transaction through ``services.provisioning`` and
``services.apikeys``; a refusal prints one sentence on stderr, exits with 2 and
changes nothing. ``--json`` prints exactly one JSON object on stdout, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import TokenError, issue_token
from app.database import create_engine, create_sessionmaker
from app.settings import Settings
from app.signing import ConfigurationError, check_credentials
from models import ApiKey, Organization, User
from services import apikeys, provisioning
from services.clock import SystemClock
from services.errors import DomainError, ValidationError

COMMANDS = ("org", "token", "apikey")
MAX_TTL_HOURS = 24 * 365


class Refusal(Exception):
    """Bad input for a command: the sentence to print, nothing changed."""


def add_commands(sub: Any) -> None:
    """Register the provisioning commands on the ``deskbill`` parser."""
    org = sub.add_parser("org", help="create and list organizations").add_subparsers(
        dest="action", required=True
    )
    create = org.add_parser("create", help="an organization, its policy and first admin")
    create.add_argument("--name", required=True)
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    create.add_argument("--timezone", help="IANA name, e.g. Europe/Berlin (default UTC)")
    create.add_argument("--billing-day", type=int, help="day of the month, 1–28 (default 1)")
    create.add_argument("--slug", help="default: made from the name")
    create.add_argument("--admin-email", required=True)
    create.add_argument("--admin-name", required=True)
    create.add_argument("--admin-subject", help="the admin's `sub` at your identity provider")
    create.add_argument(
        "--sandbox", action="store_true", help="a space for trying things out, on a test clock"
    )
    create.add_argument(
        "--clock-start",
        help="a sandbox's test clock starts here (ISO 8601, e.g. 2026-09-01T00:00:00Z; "
        "default: now)",
    )
    create.add_argument("--json", action="store_true")
    listing = org.add_parser("list", help="every organization with its slug and id")
    listing.add_argument("--json", action="store_true")

    token = sub.add_parser("token", help="issue bearer tokens").add_subparsers(
        dest="action", required=True
    )
    issue = token.add_parser("issue", help="a token for an active user")
    issue.add_argument("--org", required=True, help="slug or id")
    issue.add_argument("--email", required=True)
    issue.add_argument("--ttl", type=int, help=f"hours, 1–{MAX_TTL_HOURS} (default 720)")
    issue.add_argument("--json", action="store_true")

    key = sub.add_parser("apikey", help="API keys for BI tools and integrations")
    keys = key.add_subparsers(dest="action", required=True)
    make = keys.add_parser("create", help="a new key; its secret is shown once")
    make.add_argument("--org", required=True, help="slug or id")
    make.add_argument("--name", required=True)
    make.add_argument("--role", required=True, help="ANALYST (read only) or ADMIN")
    make.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", help="revoke a key by prefix or name")
    revoke.add_argument("--org", required=True, help="slug or id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix")
    which.add_argument("--name")
    revoke.add_argument("--json", action="store_true")


def _org_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "slug": org.slug,
        "name": org.name,
        "currency": org.currency,
        "timezone": org.timezone,
        "billingDay": org.billing_day,
        "sandbox": org.sandbox,
        "testClock": org.test_clock_at.isoformat() if org.test_clock_at else None,
    }


def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "externalSubject": user.external_subject,
    }


def _key_json(key: ApiKey) -> dict[str, Any]:
    def at(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "createdAt": at(key.created_at),
        "lastUsedAt": at(key.last_used_at),
        "revokedAt": at(key.revoked_at),
    }


def _token(settings: Settings, user: User, now: datetime, hours: int) -> dict[str, Any]:
    try:
        token = issue_token(settings, user, now, hours)
    except TokenError as refused:
        raise Refusal(str(refused)) from None
    return {"token": token, "expiresAt": (now + timedelta(hours=hours)).isoformat()}


def _clock_start(text: str | None) -> datetime | None:
    """``--clock-start`` as an aware instant (UTC when no offset is given), 2000–2099."""
    if text is None:
        return None
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Refusal(
            f"--clock-start {text!r} is not an ISO 8601 instant; write e.g. 2026-09-01T00:00:00Z."
        ) from None
    instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    if not 2000 <= instant.astimezone(UTC).year <= 2099:
        raise Refusal("--clock-start must fall in the years 2000–2099.")
    return instant.astimezone(UTC)


async def _org_create(
    session: AsyncSession, args: argparse.Namespace, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str]:
    org, admin = await provisioning.provision_organization(
        session,
        name=args.name,
        currency=args.currency,
        admin_email=args.admin_email,
        admin_name=args.admin_name,
        now=now,
        slug=args.slug,
        timezone=args.timezone,
        billing_day=args.billing_day,
        sandbox=args.sandbox,
        clock_start=_clock_start(args.clock_start),
        admin_subject=args.admin_subject,
    )
    out: dict[str, Any] = {"organization": _org_json(org), "admin": _user_json(admin)}
    text = f"Created “{org.name}” (slug {org.slug}, id {org.id}, {org.currency}"
    if org.test_clock_at is not None:
        text += f", sandbox on a test clock at {org.test_clock_at.isoformat()})"
    else:
        text += ")"
    text += f" with admin {admin.name} <{admin.email}>."
    if settings.token_secret is not None:
        out.update(_token(settings, admin, now, settings.token_ttl_hours))
        text += f"\nADMIN token (until {out['expiresAt']}):\n  {out['token']}"
    else:
        out.update(token=None, expiresAt=None)
        text += "\nThe admin signs in through your identity provider."
    return out, text


async def _org_list(
    session: AsyncSession, args: argparse.Namespace, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str]:
    rows = await provisioning.list_organizations(session)
    found = [{**_org_json(org), "activeUsers": users} for org, users in rows]
    lines = [f"{o['id']:>4}  {o['slug']:<30} {o['currency']}  {o['name']}" for o in found]
    return {"organizations": found}, "\n".join(lines) or "No organizations yet."


async def _token_issue(
    session: AsyncSession, args: argparse.Namespace, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str]:
    hours = settings.token_ttl_hours if args.ttl is None else args.ttl
    if not 1 <= hours <= MAX_TTL_HOURS:
        raise ValidationError(f"--ttl is a number of hours from 1 to {MAX_TTL_HOURS}.")
    org = await provisioning.find_organization(session, args.org)
    user = await provisioning.active_user(session, org, args.email)
    out = {"organization": org.slug, "user": _user_json(user), **_token(settings, user, now, hours)}
    return out, out["token"]


async def _apikey_create(
    session: AsyncSession, args: argparse.Namespace, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str]:
    org = await provisioning.find_organization(session, args.org)
    key, secret = await apikeys.create_api_key(
        session, org, name=args.name, role=args.role, now=now
    )
    text = (
        f"API key “{key.name}” ({key.role}, prefix {key.prefix}) for {org.slug}. "
        f"Keep it now; it is not shown again:\n  {secret}"
    )
    return {"apiKey": _key_json(key), "key": secret}, text


async def _apikey_revoke(
    session: AsyncSession, args: argparse.Namespace, settings: Settings, now: datetime
) -> tuple[dict[str, Any], str]:
    org = await provisioning.find_organization(session, args.org)
    key = await apikeys.find_api_key(session, org, prefix=args.prefix, name=args.name)
    key = await apikeys.revoke_api_key(session, org, key, now)
    return {"apiKey": _key_json(key)}, f"Revoked API key “{key.name}” (prefix {key.prefix})."


Handler = Callable[
    [AsyncSession, argparse.Namespace, Settings, datetime],
    Awaitable[tuple[dict[str, Any], str]],
]
HANDLERS: dict[tuple[str, str], Handler] = {
    ("org", "create"): _org_create,
    ("org", "list"): _org_list,
    ("token", "issue"): _token_issue,
    ("apikey", "create"): _apikey_create,
    ("apikey", "revoke"): _apikey_revoke,
}


async def _run(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str]:
    handler = HANDLERS[(args.command, args.action)]
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            return await handler(session, args, settings, SystemClock().now())
    finally:
        await engine.dispose()


def run(args: argparse.Namespace, settings: Settings, migrate: Callable[[str], None]) -> int:
    """Run one provisioning command; 0 on success, 2 (one sentence on stderr) if refused."""
    import asyncio

    try:
        if (args.command, args.action) == ("token", "issue"):
            check_credentials(settings, issuing=True)
        elif (args.command, args.action) == ("org", "create"):
            check_credentials(settings)
        migrate(settings.database_url)
        out, text = asyncio.run(_run(args, settings))
    except (ConfigurationError, Refusal) as refused:
        print(str(refused), file=sys.stderr)
        return 2
    except DomainError as refused:
        print(refused.message, file=sys.stderr)
        return 2
    print(json.dumps(out) if args.json else text, flush=True)
    return 0
