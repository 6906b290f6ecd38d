"""Sign-in through an identity provider, over real HTTP and websockets on SQLite and
PostgreSQL. A local HTTP server stands for the provider: it publishes a JWKS of keys
generated here (RSA and P-256) and counts how often it is fetched."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.asgi import create_app
from app.settings import Settings
from models import User
from services.clock import FixedClock
from tests.api.conftest import SETTINGS, Api, serve
from tests.e2e import GraphQLWS
from tests.world import World, build_world

ISSUER = "https://id.harbour.example"
AUDIENCE = "deskbill-api"
WHO = "{ viewer { role user { email } organization { slug } } }"


@dataclass
class Provider:
    """The stand-in identity provider: its keys, its JWKS URL, its fetch count."""

    url: str = ""
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)  # kids in the JWKS
    fetches: int = 0

    def add(self, kid: str, private: Any, *, publish: bool = True) -> None:
        self.keys[kid] = private
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        found = []
        for kid in self.published:
            public = self.keys[kid].public_key()
            if isinstance(public, rsa.RSAPublicKey):
                jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
                jwk["alg"] = "RS256"
            else:
                jwk = ECAlgorithm.to_jwk(public, as_dict=True)
                jwk["alg"] = "ES256"
            found.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": found}

    def public_pem(self, kid: str) -> bytes:
        pem: bytes = (
            self.keys[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pem

    def token(self, now: Any, kid: str = "rsa-1", **claims: Any) -> str:
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "00u-ann", "email": "admin@harbour.test",
                "email_verified": True, "iat": int(now.timestamp()),
                "exp": int((now + timedelta(hours=1)).timestamp()), **claims}  # fmt: skip
        body = {k: v for k, v in body.items() if v is not None}
        algorithm = "RS256" if isinstance(self.keys[kid], rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, self.keys[kid], algorithm=algorithm, headers={"kid": kid})


async def _provider_app(provider: Provider) -> Starlette:
    async def jwks(request: Request) -> JSONResponse:
        provider.fetches += 1
        return JSONResponse(provider.jwks())

    return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


@dataclass
class Signin:
    api: Api
    provider: Provider
    world: World
    clock: FixedClock


def _settings(provider: Provider, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "oidc_issuer": ISSUER,
        "oidc_audience": AUDIENCE,
        "oidc_jwks_url": f"{provider.url}/.well-known/jwks.json",
        "oidc_organization": "harbour",
        # No cooldown by default, so a rotated key is fetched at once in the tests.
        "oidc_jwks_cooldown_seconds": 0.0,
    }
    return replace(SETTINGS, **{**values, **overrides})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    idp = Provider()
    idp.add("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    idp.add("ec-1", ec.generate_private_key(ec.SECP256R1()))
    async for url in serve(await _provider_app(idp)):
        idp.url = url
        yield idp


async def _signin(
    engine: AsyncEngine, clock: FixedClock, provider: Provider, **overrides: Any
) -> AsyncIterator[Signin]:
    settings = _settings(provider, **overrides)
    app = create_app(settings, engine=engine, clock=clock, start_worker=False)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            api = Api(url=url, app=app, client=client)
            world = await build_world(api.state.sessionmaker, SETTINGS)
            yield Signin(api, provider, world, clock)


@pytest.fixture
async def signin(
    engine: AsyncEngine, clock: FixedClock, provider: Provider
) -> AsyncIterator[Signin]:
    async for found in _signin(engine, clock, provider):
        yield found


def _refusal(body: dict[str, Any]) -> str:
    assert body.get("data") in (None, {"viewer": None}), body
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED", body
    message: str = error["message"]
    assert message.endswith("."), message
    return message


async def test_a_provider_token_signs_in_its_user_over_http_and_websockets(
    signin: Signin,
) -> None:
    now = signin.clock.now()
    for kid in ("rsa-1", "ec-1"):
        body = await signin.api.gql(WHO, token=signin.provider.token(now, kid))
        assert body == {"data": {"viewer": {
            "role": "ADMIN", "user": {"email": "admin@harbour.test"},
            "organization": {"slug": "harbour"},
        }}}, kid  # fmt: skip
    # The role is Deskbill's: a token's claims cannot raise it.
    member = signin.provider.token(now, email="Alice@Harbour.test", role="ADMIN")
    assert (await signin.api.gql(WHO, token=member))["data"]["viewer"]["role"] == "MEMBER"
    async with GraphQLWS.connect(signin.api.url, member) as client:
        assert client.connection.state.name == "OPEN"
    # Deskbill's own tokens keep working next to the provider's.
    own = await signin.api.gql(WHO, token=signin.world.tokens["analyst"])
    assert own["data"]["viewer"]["role"] == "ANALYST"
    # The key set was fetched once and then served from the cache.
    assert signin.provider.fetches == 1


def _hs256_with(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    """An HS256 token made by hand (PyJWT rightly refuses a PEM key as an HMAC secret)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_each_bad_provider_token_is_unauthenticated_with_a_sentence(
    signin: Signin,
) -> None:
    now = signin.clock.now()
    idp = signin.provider
    claims = jwt.decode(idp.token(now), options={"verify_signature": False})
    idp.add("rsa-unpublished", rsa.generate_private_key(public_exponent=65537, key_size=2048),
            publish=False)  # fmt: skip
    cases = {
        "wrong issuer": (idp.token(now, iss="https://evil.example"), "not accepted"),
        "wrong audience": (idp.token(now, aud="someone-else"), "audience"),
        "no audience": (idp.token(now, aud=None), "failed verification"),
        "expired": (idp.token(now, exp=int(now.timestamp()) - 1), "expired"),
        "alg none": (
            jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"}),
            "RS256 or ES256",
        ),
        "HS256 with the public key": (
            _hs256_with(idp.public_pem("rsa-1"), claims, "rsa-1"),
            "RS256 or ES256",
        ),
        "unknown kid": (idp.token(now, kid="rsa-unpublished"), "does not publish"),
        "no kid": (jwt.encode(claims, idp.keys["rsa-1"], algorithm="RS256"), "kid"),
        "tampered": (idp.token(now)[:-4] + "AAAA", "failed verification"),
        "unknown user": (idp.token(now, email="stranger@harbour.test"), "no active user"),
        "user of another organization": (
            idp.token(now, email="mallory@rival.test"),
            "no active user",
        ),
        "unverified e-mail": (idp.token(now, email_verified=False), "verified"),
    }
    for case, (token, words) in cases.items():
        message = _refusal(await signin.api.gql(WHO, token=token))
        assert words.lower() in message.lower(), (case, message)


async def test_a_deactivated_user_is_refused_at_once(signin: Signin) -> None:
    token = signin.provider.token(signin.clock.now(), email="alice@harbour.test")
    assert "errors" not in await signin.api.gql(WHO, token=token)
    async with signin.api.state.sessionmaker.begin() as session:
        await session.execute(
            update(User).where(User.email == "alice@harbour.test").values(active=False)
        )
    assert "no active user" in _refusal(await signin.api.gql(WHO, token=token)).lower()


async def test_a_rotated_key_is_fetched_on_its_first_unknown_kid(signin: Signin) -> None:
    idp = signin.provider
    assert "errors" not in await signin.api.gql(WHO, token=idp.token(signin.clock.now()))
    assert idp.fetches == 1
    idp.add("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    body = await signin.api.gql(WHO, token=idp.token(signin.clock.now(), kid="rsa-2"))
    assert body["data"]["viewer"]["role"] == "ADMIN", body
    assert idp.fetches == 2
    assert "errors" not in await signin.api.gql(WHO, token=idp.token(signin.clock.now(), "rsa-2"))
    assert idp.fetches == 2


async def test_unknown_kids_do_not_refetch_within_the_cooldown(
    engine: AsyncEngine, clock: FixedClock, provider: Provider
) -> None:
    async for signin in _signin(engine, clock, provider, oidc_jwks_cooldown_seconds=3600.0):
        assert "errors" not in await signin.api.gql(WHO, token=provider.token(clock.now()))
        provider.add("rsa-made-up", rsa.generate_private_key(public_exponent=65537, key_size=2048),
                     publish=False)  # fmt: skip
        for _ in range(5):
            token = provider.token(clock.now(), kid="rsa-made-up")
            assert "does not publish" in _refusal(await signin.api.gql(WHO, token=token))
        assert provider.fetches == 1


async def test_the_sub_claim_matches_the_users_external_subject(
    engine: AsyncEngine, clock: FixedClock, provider: Provider
) -> None:
    create = "mutation ($input: CreateUserInput!) { createUser(input: $input) { user { email } } }"
    async for signin in _signin(engine, clock, provider, oidc_claim="sub"):
        admin = signin.world.tokens["admin"]
        person = {"email": "cara@harbour.test", "name": "Cara", "externalSubject": "00u-cara"}
        made = await signin.api.gql(create, {"input": person}, token=admin)
        assert made["data"]["createUser"]["user"] == {"email": "cara@harbour.test"}, made
        taken = {**person, "email": "cara2@harbour.test"}
        refused = await signin.api.gql(create, {"input": taken}, token=admin)
        assert refused["errors"][0]["extensions"]["code"] == "CONFLICT"
        body = await signin.api.gql(WHO, token=provider.token(clock.now(), sub="00u-cara"))
        assert body["data"]["viewer"] == {
            "role": "MEMBER", "user": {"email": "cara@harbour.test"},
            "organization": {"slug": "harbour"},
        }  # fmt: skip
        # With `sub` configured, a matching e-mail alone signs nobody in.
        stranger = provider.token(clock.now(), sub="00u-unknown", email="cara@harbour.test")
        assert "no active user" in _refusal(await signin.api.gql(WHO, token=stranger)).lower()
