"""Where the secret that signs Deskbill's own tokens comes from, and the check that a
process which issues or verifies tokens has a way to.

There is no built-in secret: a value that stands in the source would let anyone who
reads it sign in as any admin of any deployment that forgot a variable. So outside
the demo, ``DESKBILL_TOKEN_SECRET`` (at least 32 bytes) or a configured identity
provider is required. The demo database generates a secret of its own once and
keeps it in its ``instance_secrets`` table; it is used only when the variable is unset.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from services.clock import SystemClock
from services.instance import instance_secret

MIN_SECRET_BYTES = 32
DEMO_SECRET = "demo_token_secret"
HOW_TO_SET = (
    "set DESKBILL_TOKEN_SECRET to a random value of at least 32 bytes (for example the "
    "output of `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
)
# SHA-256 of secrets that were once published in this repository (the old built-in
# default among them); kept as hashes so the values themselves appear nowhere.
_PUBLISHED = frozenset(
    {
        "e7a03ba8e3dee2b5c85a42860e1301d3f527fe72de32bbeecc24515f0900ce56",
        "301e99b2b32889862ad391c224a0758a2e88062a709f614ea74ba8ed3b505d1b",
        "b567f1249439bbc39d1edd4af0c006a1c840fad614353691f3d3d43b681edd45",
    }
)


class ConfigurationError(Exception):
    """A setting is missing or unusable; the message says what to set."""


def _published(secret: str) -> bool:
    return hashlib.sha256(secret.encode()).hexdigest() in _PUBLISHED


def check_credentials(settings: Settings, *, issuing: bool = False) -> None:
    """Refuse (ConfigurationError) unless tokens can be verified safely — and, when
    ``issuing``, signed: with a strong secret, or through a complete identity
    provider configuration."""
    secret = settings.token_secret
    if secret is not None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"DESKBILL_TOKEN_SECRET is {len(secret.encode())} bytes; {HOW_TO_SET}."
            )
        if _published(secret):
            raise ConfigurationError(
                f"DESKBILL_TOKEN_SECRET is a value published in Deskbill's source; {HOW_TO_SET}."
            )
    if settings.oidc_configured:
        missing = [
            name
            for name, value in (
                ("DESKBILL_OIDC_ISSUER", settings.oidc_issuer),
                ("DESKBILL_OIDC_AUDIENCE", settings.oidc_audience),
                ("DESKBILL_OIDC_JWKS_URL", settings.oidc_jwks_url),
                ("DESKBILL_OIDC_ORGANIZATION", settings.oidc_organization),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(
                f"Sign-in through an identity provider also needs {', '.join(missing)}."
            )
        if settings.oidc_claim not in ("sub", "email"):
            raise ConfigurationError("DESKBILL_OIDC_CLAIM must be sub or email.")
        if settings.oidc_issuer == settings.token_issuer:
            raise ConfigurationError(
                f"DESKBILL_OIDC_ISSUER must differ from Deskbill's own issuer "
                f"“{settings.token_issuer}”."
            )
    if secret is None and (issuing or not settings.oidc_configured):
        also = "" if issuing else ", or configure DESKBILL_OIDC_ISSUER, DESKBILL_OIDC_AUDIENCE, "
        also += "" if issuing else "DESKBILL_OIDC_JWKS_URL and DESKBILL_OIDC_ORGANIZATION"
        raise ConfigurationError(
            f"No token signing secret: {HOW_TO_SET}{also}. "
            "(`deskbill serve --demo` makes a secret of its own for the demo database.)"
        )


async def with_demo_secret(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> Settings:
    """``settings`` with the demo database's own secret when none is configured."""
    if settings.token_secret is not None:
        return settings
    secret = await instance_secret(sessionmaker, DEMO_SECRET, SystemClock().now())
    return replace(settings, token_secret=secret)
