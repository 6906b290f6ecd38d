"""The command line's help names what the server really offers."""

from __future__ import annotations

import re

import pytest

from app import cli
from app.exports import EXPORTS


def test_export_help_names_every_export(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    listed = re.search(r"\n  kind\s+(.*?)\n\noptions", capsys.readouterr().out, re.S)
    assert listed is not None
    kinds = {k.strip() for k in " ".join(listed.group(1).split()).split(",")}
    assert kinds == set(EXPORTS)
