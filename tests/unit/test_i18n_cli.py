"""``ckms --help``, usage and usage errors in Japanese (ckms_app/cli/help_i18n.py), English by default.

The catalogs are complete: every help text of the built parser has a ``help`` entry in ckms.po (and no
entry is left over from a removed option), every message the running Python's argparse marks has one in
argparse.po, placeholders are kept and both .mo files are what Babel compiles. The help output itself is
read back through ``ckms.cli.main.main`` for every command: in Japanese no English help text remains, in
English nothing changes, and argparse is left as it was.
"""

from __future__ import annotations

import argparse
import gettext
import io
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from ckms_app.cli import help_i18n
from ckms_app.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
MESSAGES = REPO / "ckms_app" / "locale" / "ja" / "LC_MESSAGES"
CKMS_PO = MESSAGES / "ckms.po"
ARGPARSE_PO = MESSAGES / "argparse.po"
_PERCENT = re.compile(r"%(?:\(\w+\))?[#0\- +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _catalog(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        return read_po(f, locale="ja")


def _help_entries() -> dict[str, str]:
    return {
        str(m.id): str(m.string) for m in _catalog(CKMS_PO) if m.id and m.context == help_i18n.HELP_CONTEXT
    }


def _argparse_messages() -> set[str | tuple[str, str]]:
    found: set[str | tuple[str, str]] = set()
    for _line, message, _comments, _ctx in extract_from_file(
        "python", argparse.__file__, keywords={"_": None, "ngettext": (1, 2)}
    ):
        found.add(message if isinstance(message, str) else (message[0], message[1]))
    return found


def _english_help_texts() -> set[str]:
    """ckms's own help texts: the built parser's, less the ones argparse supplies (its help option)."""
    ours = help_i18n.help_texts(build_parser())
    return ours - {m for m in _argparse_messages() if isinstance(m, str)}


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = []
    pending: list[tuple[list[str], argparse.ArgumentParser]] = [([], build_parser())]
    while pending:
        path, parser = pending.pop()
        paths.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(([*path, name], child) for name, child in action.choices.items())
    return sorted(paths)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def _placeholders(text: str) -> list[str]:
    return sorted(_PERCENT.findall(text))


# ------------------------------------------------------------------ the catalogs are complete and current
@pytest.mark.parametrize("po", [CKMS_PO, ARGPARSE_PO], ids=lambda p: p.name)
def test_the_compiled_catalog_is_what_babel_makes_of_the_po(po: Path) -> None:
    compiled = io.BytesIO()
    write_mo(compiled, _catalog(po))
    mo = po.with_suffix(".mo")
    command = f".venv/bin/pybabel compile -d ckms_app/locale -D {po.stem}"
    assert mo.exists() and mo.read_bytes() == compiled.getvalue(), f"{mo.name} is not current: run {command}"


def test_every_help_text_has_a_japanese_entry_and_none_is_stale() -> None:
    english, entries = _english_help_texts(), _help_entries()
    assert len(english) > 50, "the parser walk found too few help texts"
    assert not sorted(english - set(entries)), f"help texts without a msgctxt 'help' entry in {CKMS_PO.name}"
    assert not sorted(set(entries) - english), f"'help' entries in {CKMS_PO.name} no option has any more"
    assert not [m for m in english if not _JAPANESE.search(entries[m])], "help entries not in Japanese"


def test_help_translations_keep_argparse_placeholders() -> None:
    wrong = {m: t for m, t in _help_entries().items() if _placeholders(m) != _placeholders(t)}
    assert not wrong, wrong


def test_every_argparse_message_is_translated() -> None:
    catalog = _catalog(ARGPARSE_PO)
    translated = {(m.id if isinstance(m.id, str) else tuple(m.id)): m.string for m in catalog if m.id}
    marked = _argparse_messages()
    assert {
        "usage: ",
        "options",
        "positional arguments",
        "the following arguments are required: %s",
    } <= marked
    missing = sorted(map(str, marked - set(translated)))
    assert not missing, f"argparse messages without an entry in {ARGPARSE_PO.name} (a new Python?)"
    for msgid, text in translated.items():
        texts = [text] if isinstance(text, str) else list(text)
        source = msgid if isinstance(msgid, str) else msgid[0]
        assert all(t and _JAPANESE.search(t) for t in texts), msgid
        assert all(_placeholders(t) == _placeholders(source) for t in texts), (msgid, texts)


# ------------------------------------------------------------------ what a person sees
def test_japanese_help_of_every_command_has_no_english_help_text_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    english = _english_help_texts()
    paths = _command_paths()
    assert ["hsm", "custody", "split"] in paths and ["audit", "verify"] in paths
    for path in paths:
        out = _help(["--lang", "ja", *path, "--help"], capsys)
        flat = " ".join(out.split())  # argparse wraps long texts
        assert out.startswith("使い方: ckms"), (path, out[:80])
        assert "オプション:" in out and "このヘルプを表示して終了します" in out, path
        left = [text for text in english if len(text) > 12 and " ".join(text.split()) in flat]
        assert not left, (path, left)


def test_lang_after_the_command_and_the_locale_also_choose_japanese(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "RFC 5280 の失効理由（名前またはコード）" in _help(["revoke", "--help", "--lang=ja"], capsys)
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    for name in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    out = _help(["hsm", "--help"], capsys)
    assert out.startswith("使い方: ckms hsm") and "位置引数:" in out
    assert "トークン内で新しい CA の鍵ペアを生成する（鍵の更新）" in out
    assert _help(["--lang", "en", "hsm", "--help"], capsys).startswith("usage: ckms hsm")


def test_english_is_the_default_and_unchanged(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    out = _help(["issue", "--help"], capsys)
    assert out.startswith("usage: ckms issue") and "options:" in out
    assert "use this role's credentials from the home (default operator)" in " ".join(out.split())
    assert not _JAPANESE.search(out)
    expected = io.StringIO()  # the parser built without help_i18n says exactly the same
    (plain,) = [p for p in help_i18n.parsers(build_parser()) if p.prog == "ckms issue"]
    plain.print_help(expected)
    assert out == expected.getvalue()


def test_usage_errors_in_japanese_and_argparse_restored_after(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--lang", "ja", "issue", "--csr", "r.csr"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("使い方: ckms issue") and "ckms issue: エラー: 次の引数が必要です: --out" in err
    with pytest.raises(SystemExit):
        main(["--lang", "ja", "crl", "fetch", "--which", "newest", "--out", "x"])
    assert "無効な選択肢です: 'newest'" in capsys.readouterr().err
    assert vars(argparse)["_"] is gettext.gettext and vars(argparse)["ngettext"] is gettext.ngettext
    with pytest.raises(SystemExit):
        main(["issue", "--csr", "r.csr"])
    assert "error: the following arguments are required: --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--lang", "ja", "issue"], "ja"),
        (["issue", "--lang=ja"], "ja"),
        (["--lang", "ja", "issue", "--lang", "en"], "en"),  # the last one, as argparse keeps
        (["--lang"], None),
        (["audit", "verify", "--", "--lang", "ja"], None),  # after -- it is not an option
    ],
)
def test_lang_asked_reads_the_raw_arguments(argv: list[str], expected: str | None) -> None:
    assert help_i18n.lang_asked(argv) == expected


# ------------------------------------------------------------------ prompts
@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("ja", ["カストディアン alice の新しいパスフレーズ: ", "alice のパスフレーズをもう一度入力: "]),
        ("en", ["new passphrase for custodian alice: ", "repeat the passphrase for alice: "]),
    ],
)
def test_custody_passphrase_prompts_in_the_persons_language(
    lang: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckms_app.cli import hsm

    prompts: list[str] = []

    def answer(prompt: str) -> str:  # stands in for the terminal: getpass reads /dev/tty
        prompts.append(prompt)
        return "a passphrase of some length"

    monkeypatch.setattr(hsm.getpass, "getpass", answer)
    assert hsm._new_passphrases(["alice"], [], lang) == ["a passphrase of some length"]
    assert prompts == expected
