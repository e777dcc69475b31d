"""Destructive CLI commands act only when confirmed (A.49): ``ckms revoke`` and ``ckms hsm destroy-key``
stop on a bare command line without a terminal, before they read a credential, connect or open the token;
``--yes`` or the target typed back at a terminal confirms; anything else typed does nothing."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from ckms_app.cli import confirm
from ckms_app.cli.main import build_parser, main
from ckms_app.errors import ClientError


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(yes=False, lang="en", **kw)


def test_without_a_terminal_and_without_yes_nothing_is_done() -> None:
    with pytest.raises(ClientError, match="cannot be undone: confirm with --yes"):
        confirm.confirm(_args(), "6de8", stdin=io.StringIO("6de8\n"))


def test_yes_confirms() -> None:
    confirm.confirm(argparse.Namespace(yes=True), "6de8", stdin=io.StringIO(""))


def test_typing_the_target_back_confirms_and_anything_else_refuses() -> None:
    err = io.StringIO()
    confirm.confirm(_args(), "old-key", stdin=_Tty("old-key\n"), stderr=err)
    assert "type old-key" in err.getvalue()
    with pytest.raises(ClientError, match="not confirmed: nothing was done"):
        confirm.confirm(_args(), "old-key", stdin=_Tty("y\n"), stderr=io.StringIO())


def test_japanese_prompt() -> None:
    with pytest.raises(ClientError, match="取り消せません"):
        confirm.confirm(argparse.Namespace(yes=False, lang="ja"), "6de8", stdin=io.StringIO(""))


def test_both_destructive_commands_take_yes() -> None:
    parser = build_parser()
    assert parser.parse_args(["revoke", "--serial", "01", "--yes"]).yes
    assert not parser.parse_args(["revoke", "--serial", "01"]).yes
    assert parser.parse_args(["hsm", "destroy-key", "--label", "k", "--yes"]).yes


@pytest.mark.parametrize(
    "argv",
    [["revoke", "--serial", "01"], ["hsm", "destroy-key", "--label", "old-key"]],
)
def test_cli_refuses_before_reading_the_home(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # an empty, unconfigured home: had the command gone past the confirmation it would fail on the
    # missing configuration instead, with another message
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc = main([*argv, "--home", str(tmp_path), "--lang", "en"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot be undone: confirm with --yes" in err, err
