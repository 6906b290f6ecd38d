"""The provisioning commands, run for real on SQLite and PostgreSQL: ``deskbill org
create`` makes a space whose printed admin token works against a live server;
``org list``, ``token issue`` and ``apikey create``/``revoke`` do what they say; bad
input prints one sentence on stderr, exits with 2 and changes nothing.

Most runs go through ``app.cli.main(argv)`` (in a thread, since it runs its own event
loop) with captured output; one goes through the installed console script.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

import models
from app.cli import alembic_config, main
from tests.api.conftest import SETTINGS, Api

SCRIPT = Path(sys.executable).parent / "deskbill"


@pytest.fixture
async def cli(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Any:
    """``run(*argv) -> (exit code, stdout, stderr)`` against the API server's database."""
    url = engine.url.render_as_string(hide_password=False)
    # The test database is built from the models; tell Alembic it is at the head.
    await asyncio.to_thread(command.stamp, alembic_config(url), "head")
    for name in list(os.environ):
        if name.startswith("DESKBILL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DESKBILL_TOKEN_SECRET", str(SETTINGS.token_secret))
    capsys.readouterr()

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.url = url  # type: ignore[attr-defined]
    return run


async def _counts(api: Api) -> dict[str, int]:
    async with api.state.sessionmaker() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in models.Base.metadata.sorted_tables
        }


ORG = ("org", "create", "--name", "Leith Works", "--currency", "eur",
       "--timezone", "Europe/Berlin", "--billing-day", "5",
       "--admin-email", "Ann@Leith.example", "--admin-name", "Ann Leith")  # fmt: skip
VIEWER = """{ viewer { role user { email }
  organization { name slug currency sandbox invoicePolicy { timezone billingDay } } } }"""


async def test_org_create_prints_a_token_that_works_over_http(api: Api, cli: Any) -> None:
    code, out, err = await cli(*ORG, "--sandbox", "--admin-subject", "00u-ann", "--json")
    assert (code, err) == (0, "")
    (line,) = out.strip().splitlines()  # exactly one JSON object
    made = json.loads(line)
    assert made["organization"]["slug"] == "leith-works"
    assert made["organization"]["sandbox"] is True
    assert made["admin"]["email"] == "ann@leith.example"
    assert made["admin"]["externalSubject"] == "00u-ann"

    body = await api.gql(VIEWER, token=made["token"])
    assert body == {"data": {"viewer": {
        "role": "ADMIN", "user": {"email": "ann@leith.example"},
        "organization": {"name": "Leith Works", "slug": "leith-works", "currency": "EUR",
                         "sandbox": True,
                         "invoicePolicy": {"timezone": "Europe/Berlin", "billingDay": 5}},
    }}}  # fmt: skip

    code, out, _ = await cli("org", "list", "--json")
    assert code == 0
    listed = json.loads(out)["organizations"]
    assert [(o["slug"], o["activeUsers"], o["sandbox"]) for o in listed] == [
        ("leith-works", 1, True)
    ]
    code, out, _ = await cli("org", "list")
    assert code == 0 and "leith-works" in out

    for org in ("leith-works", str(made["organization"]["id"])):
        code, out, err = await cli("token", "issue", "--org", org, "--email", "ANN@leith.example",
                                   "--ttl", "2", "--json")  # fmt: skip
        assert (code, err) == (0, ""), err
        issued = json.loads(out)
        body = await api.gql("{ viewer { role } }", token=issued["token"])
        assert body == {"data": {"viewer": {"role": "ADMIN"}}}
    code, out, _ = await cli(
        "token", "issue", "--org", "leith-works", "--email", made["admin"]["email"]
    )
    assert code == 0 and (await api.gql("{ viewer { role } }", token=out.strip()))["data"]


async def test_a_plain_org_is_no_sandbox_and_prints_words_not_json(api: Api, cli: Any) -> None:
    code, out, err = await cli(*ORG)
    assert code == 0 and err == ""
    assert "Leith Works" in out and "leith-works" in out
    token = out.strip().splitlines()[-1].strip()
    body = await api.gql("{ organization { sandbox } }", token=token)
    assert body == {"data": {"organization": {"sandbox": False}}}


REFUSED = {
    "taken slug": (("org", "create", "--name", "Acme", "--slug", "harbour", "--currency",
                    "USD", "--admin-email", "new@x.example", "--admin-name", "N"), "taken"),
    "taken e-mail": (("org", "create", "--name", "New", "--currency", "USD",
                      "--admin-email", "ADMIN@harbour.test", "--admin-name", "N"), "already"),
    "unknown currency": (("org", "create", "--name", "New", "--currency", "EUX",
                          "--admin-email", "n@x.example", "--admin-name", "N"), "EUX"),
    "unknown timezone": (("org", "create", "--name", "New", "--currency", "USD", "--timezone",
                          "Mars/Olympus", "--admin-email", "n@x.example", "--admin-name", "N"),
                         "timezone"),
    "bad billing day": (("org", "create", "--name", "New", "--currency", "USD", "--billing-day",
                         "29", "--admin-email", "n@x.example", "--admin-name", "N"), "1 to 28"),
    "bad e-mail": (("org", "create", "--name", "New", "--currency", "USD",
                    "--admin-email", "nobody", "--admin-name", "N"), "email"),
    "unknown org": (("token", "issue", "--org", "nowhere", "--email", "admin@harbour.test"),
                    "org list"),
    "unknown user": (("token", "issue", "--org", "harbour", "--email", "who@x.example"),
                     "no user"),
    "ttl out of range": (("token", "issue", "--org", "harbour", "--email",
                          "admin@harbour.test", "--ttl", "9000"), "--ttl"),
    "bad role": (("apikey", "create", "--org", "harbour", "--name", "BI", "--role",
                  "MEMBER"), "ANALYST or ADMIN"),
    "key of unknown org": (("apikey", "create", "--org", "999", "--name", "BI", "--role",
                            "ANALYST"), "No organization"),
    "revoke unknown key": (("apikey", "revoke", "--org", "harbour", "--prefix", "abc"),
                           "no live API key"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_bad_input_is_one_sentence_exit_2_and_changes_nothing(
    api: Api, cli: Any, case: str
) -> None:
    from tests.world import build_world

    await build_world(api.state.sessionmaker, SETTINGS)
    argv, words = REFUSED[case]
    before = await _counts(api)
    code, out, err = await cli(*argv, "--json")
    assert code == 2, (out, err)
    assert out == ""
    (sentence,) = err.strip().splitlines()
    assert words in sentence and sentence.endswith("."), sentence
    assert await _counts(api) == before


async def test_an_inactive_user_gets_no_token(api: Api, cli: Any) -> None:
    from models import User
    from tests.world import build_world

    await build_world(api.state.sessionmaker, SETTINGS)
    async with api.state.sessionmaker.begin() as session:
        user = await session.scalar(select(User).where(User.email == "bob@harbour.test"))
        assert user is not None
        user.active = False
    code, _, err = await cli("token", "issue", "--org", "harbour", "--email", user.email)
    assert code == 2 and "deactivated" in err


async def test_api_keys_from_the_command_line(api: Api, cli: Any) -> None:
    code, out, _ = await cli(*ORG, "--json")
    org = json.loads(out)["organization"]["slug"]
    code, out, err = await cli("apikey", "create", "--org", org, "--name", "Metabase",
                               "--role", "analyst", "--json")  # fmt: skip
    assert (code, err) == (0, "")
    made = json.loads(out)
    key = made["key"]
    assert made["apiKey"]["role"] == "ANALYST" and key.startswith("dbk_")
    assert (await api.gql("{ viewer { role } }", token=key))["data"] == {
        "viewer": {"role": "ANALYST"}
    }
    code, _, err = await cli("apikey", "create", "--org", org, "--name", "Metabase",
                             "--role", "ADMIN")  # fmt: skip
    assert code == 2 and "Metabase" in err

    code, out, _ = await cli("apikey", "revoke", "--org", org, "--prefix",
                             made["apiKey"]["prefix"], "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["apiKey"]["revokedAt"]
    body = await api.gql("{ viewer { role } }", token=key)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    # The name is free again once its key is revoked; revoke by name.
    code, out, _ = await cli("apikey", "create", "--org", org, "--name", "Metabase",
                             "--role", "ADMIN", "--json")  # fmt: skip
    second = json.loads(out)["key"]
    code, out, _ = await cli("apikey", "revoke", "--org", org, "--name", "Metabase")
    assert code == 0 and "Revoked" in out
    assert (await api.gql("{ viewer { role } }", token=second))["errors"]


def test_the_console_script_creates_an_org_and_refuses_without_a_secret(tmp_path: Path) -> None:
    """The installed ``deskbill`` as a new user types it, on a fresh SQLite file."""
    script = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "app.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBILL_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'space.db'}"
    args = ["org", "create", "--name", "Leith Works", "--currency", "EUR",
            "--admin-email", "ann@leith.example", "--admin-name", "Ann", "--json"]  # fmt: skip
    refused = subprocess.run([*script, *args], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "DESKBILL_TOKEN_SECRET" in refused.stderr
    assert not (tmp_path / "space.db").exists()  # nothing made, not even the file

    env["DESKBILL_TOKEN_SECRET"] = "s" * 8 + os.urandom(16).hex()
    made = subprocess.run([*script, *args], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token"].count(".") == 2
