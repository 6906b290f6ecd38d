"""No guessable signing secret: without ``DESKBILL_TOKEN_SECRET`` (32 bytes or more)
or an identity provider the server and the worker refuse to start and say what to
set, and a token signed with any string that appears in the source tree is refused."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jwt
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import TokenError, authenticate, issue_token
from app.settings import Settings
from app.signing import ConfigurationError, check_credentials
from models import User
from tests.api import conftest as api_fixtures
from tests.api.conftest import Api
from tests.world import NOW, build_world

api = api_fixtures.api  # a live server, for the one check over HTTP

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "deskbill"
OLD_DEFAULT = "deskbill-dev-secret-change-me-0123456789"  # the built-in secret of old
STRONG = "q" * 8 + os.urandom(16).hex()
OIDC = {
    "oidc_issuer": "https://id.example",
    "oidc_audience": "deskbill",
    "oidc_jwks_url": "https://id.example/jwks",
    "oidc_organization": "harbour",
}


def _refusal(settings: Settings, *, issuing: bool = False) -> str:
    with pytest.raises(ConfigurationError) as refused:
        check_credentials(settings, issuing=issuing)
    return str(refused.value)


def test_settings_carry_no_secret_of_their_own() -> None:
    assert Settings().token_secret is None
    assert Settings.from_env({}).token_secret is None
    assert Settings.from_env({"DESKBILL_TOKEN_SECRET": ""}).token_secret is None
    assert OLD_DEFAULT not in (ROOT / "app" / "settings.py").read_text()


def test_what_counts_as_a_way_to_sign_in() -> None:
    assert "DESKBILL_TOKEN_SECRET" in _refusal(Settings())
    assert "32 bytes" in _refusal(Settings(token_secret="short-but-not-empty"))
    assert "published" in _refusal(Settings(token_secret=OLD_DEFAULT))
    check_credentials(Settings(token_secret=STRONG), issuing=True)
    # An identity provider alone verifies sign-ins, but issues no tokens of ours.
    check_credentials(Settings(**OIDC))  # type: ignore[arg-type]
    assert "DESKBILL_TOKEN_SECRET" in _refusal(Settings(**OIDC), issuing=True)  # type: ignore[arg-type]
    partial = {k: v for k, v in OIDC.items() if k != "oidc_organization"}
    assert "DESKBILL_OIDC_ORGANIZATION" in _refusal(Settings(**partial))  # type: ignore[arg-type]
    assert "sub or email" in _refusal(Settings(**OIDC, oidc_claim="name"))  # type: ignore[arg-type]
    assert "differ" in _refusal(Settings(**{**OIDC, "oidc_issuer": "deskbill"}))  # type: ignore[arg-type]


def _script() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "app.cli"]


@pytest.mark.parametrize(
    ("command", "secret", "words"),
    [
        (["serve"], None, "DESKBILL_TOKEN_SECRET"),
        (["worker"], None, "DESKBILL_TOKEN_SECRET"),
        (["serve"], "too-short", "32 bytes"),
        (["serve", "--demo"], "too-short", "32 bytes"),
        (["worker"], OLD_DEFAULT, "published"),
        (["token", "issue", "--org", "x", "--email", "a@b.example"], None, "DESKBILL_TOKEN_SECRET"),
    ],
)
def test_processes_refuse_to_start_without_a_usable_secret(
    tmp_path: Path, command: list[str], secret: str | None, words: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBILL_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'never.db'}"
    if secret is not None:
        env["DESKBILL_TOKEN_SECRET"] = secret
    done = subprocess.run(
        [*_script(), *command, "--port", "1"] if command[0] == "serve" else [*_script(), *command],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    (sentence,) = done.stderr.strip().splitlines()
    assert words in sentence
    assert not (tmp_path / "never.db").exists()  # refused before touching anything


def _source_strings() -> set[str]:
    """Every string literal of every Python file in the repository, and every
    whitespace-separated word of its docs and configuration."""
    found: set[str] = set()
    skip = {".venv", ".git", "node_modules", "deskbill.egg-info"}
    for path in ROOT.rglob("*"):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix == ".py":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found |= {
                node.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
            }
        elif path.suffix in {".md", ".toml", ".ini", ".cfg", ".graphql"} or path.name in {
            "Makefile",
            "run",
        }:
            found |= set(path.read_text(encoding="utf-8").split())
    return {s for s in found if s}


async def test_a_token_signed_with_any_string_of_the_source_is_refused(
    db: async_sessionmaker[AsyncSession],
) -> None:
    settings = Settings(token_secret=STRONG)
    world = await build_world(db, settings)
    strings = _source_strings()
    assert OLD_DEFAULT in strings and len(strings) > 1000
    claims = {"sub": str(world.ids["admin"]), "org": world.ids["org"], "iss": "deskbill",
              "exp": int(NOW.timestamp()) + 3600}  # fmt: skip
    async with db() as session:
        # The server's real secret does sign in (so the refusals below mean something).
        assert (await authenticate(session, settings, world.tokens["admin"], NOW)).user_id
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns about short HMAC keys
            forged = {jwt.encode(claims, s, algorithm="HS256") for s in strings}
        accepted = []
        for token in forged:
            try:
                await authenticate(session, settings, token, NOW)
            except TokenError:
                continue
            accepted.append(token)
    assert accepted == []


async def test_the_old_default_secret_signs_nobody_in_over_http(api: Api) -> None:
    world = await build_world(api.state.sessionmaker, api.state.settings)
    async with api.state.sessionmaker() as session:
        admin = await session.scalar(select(User).where(User.id == world.ids["admin"]))
    assert admin is not None
    forged = issue_token(Settings(token_secret=OLD_DEFAULT), admin, NOW)
    body = await api.gql("{ viewer { role } }", token=forged)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == "The bearer token is not valid for this server."
