"""Access tokens of the space's own identity provider (OpenID Connect).

The provider signs with an asymmetric key (RS256 or ES256) published at its JWKS
URL. PyJWT's ``PyJWKClient`` fetches and caches that key set, and fetches it again
when a token names a key id it has not seen (a rotated key), at most once per
cooldown so made-up key ids cannot make us hammer the provider. Symmetric
algorithms and ``none`` are refused before any key is looked at: with HS256 the
provider's *public* key would become a shared secret anyone could sign with.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
from jwt import PyJWKClient

from app.settings import Settings

OIDC_ALGORITHMS = ("RS256", "ES256")
_clients: dict[tuple[str, float], PyJWKClient] = {}


class OidcRefusal(Exception):
    """Why an identity-provider token was refused, in words for the caller."""


def _client(settings: Settings) -> PyJWKClient:
    assert settings.oidc_jwks_url is not None
    key = (settings.oidc_jwks_url, settings.oidc_jwks_cooldown_seconds)
    if key not in _clients:
        _clients[key] = PyJWKClient(
            settings.oidc_jwks_url,
            cache_jwk_set=True,
            lifespan=300,
            timeout=10,
            cooldown_duration=settings.oidc_jwks_cooldown_seconds,
        )
    return _clients[key]


async def verify_oidc_token(settings: Settings, token: str, now_timestamp: float) -> dict[str, Any]:
    """The verified claims of a provider token: signature against the JWKS, issuer,
    audience, expiry (against the server's clock) and the configured user claim."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise OidcRefusal("The bearer token is not a well-formed JWT.") from None
    algorithm = header.get("alg")
    if algorithm not in OIDC_ALGORITHMS:
        raise OidcRefusal(
            f"Tokens of the identity provider must be signed with RS256 or ES256, not {algorithm}."
        )
    if not header.get("kid"):
        raise OidcRefusal("The identity provider's token names no signing key (kid).")
    try:
        signing_key = await asyncio.to_thread(_client(settings).get_signing_key, header["kid"])
    except jwt.PyJWKClientConnectionError:
        raise OidcRefusal(
            "The identity provider's signing keys cannot be fetched right now; try again."
        ) from None
    except jwt.PyJWKClientError:
        raise OidcRefusal(
            "The token is signed with a key the identity provider does not publish."
        ) from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key.key,
            algorithms=[algorithm],
            audience=settings.oidc_audience,
            issuer=settings.oidc_issuer,
            options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidAudienceError:
        raise OidcRefusal(
            f"The token is not meant for this server (audience must be {settings.oidc_audience})."
        ) from None
    except jwt.InvalidIssuerError:
        raise OidcRefusal(f"The token's issuer is not {settings.oidc_issuer}.") from None
    except jwt.InvalidTokenError:
        raise OidcRefusal("The identity provider's token failed verification.") from None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= now_timestamp:
        raise OidcRefusal("Your sign-in has expired; sign in with your identity provider again.")
    if claims.get(settings.oidc_claim) in (None, ""):
        raise OidcRefusal(f"The token carries no {settings.oidc_claim} claim to find you by.")
    if settings.oidc_claim == "email" and claims.get("email_verified") is False:
        raise OidcRefusal("Your identity provider has not verified this e-mail address.")
    return claims
