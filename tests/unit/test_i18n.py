"""The language people read ckms in (ckms_app/i18n.py) and the Japanese catalog behind it.

The catalog is complete and current: every CLI message marked ``_()``, every error code ckms raises and
every whole error sentence it lists exist in ``ckms.po`` with a translation using the same placeholders,
and the shipped ``ckms.mo`` is exactly what Babel compiles from that ``ckms.po`` (so a .po edited after
the .mo was compiled, or a .mo edited by hand, fails here). English stays the default and byte for byte
the text the code says, in the CLI and in the daemon's EST/JSON error answers.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import fnmatch
import io
import json
import string
import tomllib
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from ckms_app import errors, i18n
from ckms_app.cli.main import build_parser
from ckms_app.daemon.http import est_error, json_error

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ckms_app"
PO = PACKAGE / "locale" / "ja" / "LC_MESSAGES" / "ckms.po"
MO = PO.with_suffix(".mo")
COMPILE = ".venv/bin/pybabel compile -d ckms_app/locale -D ckms"
# Where the translatable messages are marked: _("...") in the CLI, .gettext("...") in i18n.py (the
# sentence wrapping an error's English detail).
MARKED = [*sorted((PACKAGE / "cli").glob("*.py")), PACKAGE / "i18n.py"]


def _po() -> dict[tuple[str | None, str], str]:
    with open(PO, "rb") as f:
        catalog = read_po(f, locale="ja")
    return {(m.context, str(m.id)): str(m.string) for m in catalog if m.id}


def _marked_messages() -> set[str]:
    found: set[str] = set()
    for path in MARKED:
        for _lineno, message, _comments, context in extract_from_file(
            "python", str(path), keywords={"_": None, "gettext": None}
        ):
            assert isinstance(message, str) and context is None, f"{path}: _() of a non-literal: {message!r}"
            found.add(message)
    return found


def _error_codes() -> set[str]:
    """Every machine code: the error classes' own, and every ``code="..."`` given at a raise."""
    codes: set[str] = set()
    pending: list[type[errors.CkmsError]] = [errors.CkmsError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                if isinstance(node.value.value, str):
                    codes.add(node.value.value)
    return codes - {code for code in codes if not code.islower()}  # e.g. CODE in enrolment details


def _string_constants() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


# ------------------------------------------------------------------ choosing the language
@pytest.mark.parametrize(
    ("lang", "env", "expected"),
    [
        (None, {}, "en"),
        (None, {"LANG": "ja_JP.UTF-8"}, "ja"),
        (None, {"LANG": "C.UTF-8"}, "en"),
        (None, {"LANG": "ja_JP.UTF-8", "LC_MESSAGES": "en_US.UTF-8"}, "en"),
        (None, {"LANG": "en_US.UTF-8", "LC_MESSAGES": "ja_JP.eucJP"}, "ja"),
        (None, {"LC_ALL": "C", "LC_MESSAGES": "ja_JP.UTF-8", "LANG": "ja_JP.UTF-8"}, "en"),
        (None, {"LC_ALL": "ja", "LANG": "C"}, "ja"),
        (None, {"LC_ALL": "", "LC_MESSAGES": "", "LANG": "ja_JP.UTF-8"}, "ja"),  # empty is unset (POSIX)
        ("en", {"LC_ALL": "ja_JP.UTF-8"}, "en"),  # --lang wins
        ("ja", {"LANG": "C"}, "ja"),
    ],
)
def test_language_from_lang_option_then_locale(lang: str | None, env: dict[str, str], expected: str) -> None:
    assert i18n.resolve_language(lang, env) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("ja", "ja"),
        ("ja-JP,ja;q=0.9,en-US;q=0.8,en;q=0.7", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("en;q=0.5, ja", "ja"),
        ("ja;q=0.1, en", "en"),
        ("ja, en", "ja"),  # a tie: the first named
        ("fr, de;q=0.9, *;q=0.1", "en"),  # nothing supported: the default
        ("ja;q=0", "en"),  # q=0 means "not acceptable"
        ("ja;q=bogus, en;q=0.1", "en"),
        ("JA-jp", "ja"),
    ],
)
def test_accept_language(header: str | None, expected: str) -> None:
    assert i18n.accept_language(header) == expected


def test_english_is_the_source_text_and_japanese_comes_from_the_catalog() -> None:
    en, ja = i18n.translator("en"), i18n.translator("ja")
    assert en("ckms: error: {message}") == "ckms: error: {message}"
    assert ja("ckms: error: {message}") == "ckms: エラー: {message}"
    assert ja("a sentence nobody translated") == "a sentence nobody translated"


# ------------------------------------------------------------------ the catalog is complete and current
def test_the_compiled_catalog_is_what_babel_makes_of_the_po() -> None:
    with open(PO, "rb") as f:
        catalog = read_po(f, locale="ja")
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    assert MO.exists(), f"{MO.relative_to(REPO)} is missing: run {COMPILE}"
    assert MO.read_bytes() == compiled.getvalue(), (
        f"{MO.relative_to(REPO)} is older than or differs from {PO.name}: run {COMPILE}"
    )
    assert not [m.id for m in catalog if m.id and m.fuzzy], "fuzzy entries are not compiled: review them"


def test_every_cli_message_is_translated_and_none_is_stale() -> None:
    po = _po()
    plain = {msgid for (ctx, msgid) in po if ctx is None}
    marked = _marked_messages()
    assert marked, "no _() found: the extraction is broken"
    assert not sorted(marked - plain), f"messages without a Japanese entry in {PO.name} (run the extraction)"
    assert not sorted(plain - marked), f"entries in {PO.name} that the code no longer says"
    assert not [m for m in marked if not po[(None, m)]], "empty translations"


def test_every_error_code_has_a_sentence_and_none_is_stale() -> None:
    po = _po()
    sentences = {msgid for (ctx, msgid) in po if ctx == i18n.ERROR_CONTEXT}
    codes = _error_codes()
    assert {"csr_malformed", "not_authenticated", "error_state", "lint_unavailable"} <= codes
    assert not sorted(codes - sentences), "error codes without a Japanese sentence"
    assert not sorted(sentences - codes - {i18n.GENERIC_CODE}), "sentences for codes ckms no longer has"


def test_whole_error_sentences_are_sentences_the_code_says() -> None:
    constants = _string_constants()
    whole = [msgid for (ctx, msgid) in _po() if ctx == i18n.MESSAGE_CONTEXT]
    assert whole
    assert not [m for m in whole if m not in constants], "translated sentences no module says any more"


def test_translations_use_exactly_the_placeholders_of_the_english() -> None:
    wrong = [(msgid, text) for (ctx, msgid), text in _po().items() if _fields(msgid) != _fields(text)]
    assert not wrong, wrong


def test_the_package_data_ships_the_compiled_catalog() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ckms_app"]
    relative = MO.relative_to(PACKAGE).as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), patterns
    assert any(req.startswith("babel==") for req in pyproject["project"]["optional-dependencies"]["dev"])


# ------------------------------------------------------------------ errors: code English, sentence translated
def test_error_sentences() -> None:
    detail = "not a DER PKCS#10 request: ParseError"
    assert i18n.localise_error("csr_malformed", detail, "en") == detail
    ja = i18n.localise_error("csr_malformed", detail, "ja")
    assert ja.startswith("証明書発行要求（CSR）の形式が正しくない") and ja.endswith(f"（詳細: {detail}）")
    refused = "enrolment refused: unknown entity, or a wrong, used, expired or locked code"
    assert i18n.localise_error("enrolment_refused", refused, "ja").startswith("登録を拒否しました: ")
    assert i18n.localise_error("no_such_code", "boom", "ja") == "要求は処理されませんでした。（詳細: boom）"


def _sent(response: object, accept: str | None) -> tuple[bytes, dict[str, str]]:
    """Prepare an error response for a request with this Accept-Language; its body and headers."""
    headers = {"Accept-Language": accept} if accept is not None else {}
    request = make_mocked_request("POST", "/.well-known/est/simpleenroll", headers=headers)
    asyncio.run(response.prepare(request))  # type: ignore[attr-defined]
    return response.body, dict(response.headers)  # type: ignore[attr-defined]


def test_est_and_json_errors_are_english_unless_japanese_is_asked_for() -> None:
    def exc() -> errors.CsrRejected:
        return errors.CsrRejected("not a DER PKCS#10 request: bad", code="csr_malformed")

    # English, with or without the header: exactly the bytes ckms has always sent.
    for accept in (None, "en", "fr, de"):
        body, headers = _sent(est_error(exc()), accept)
        assert body == b"csr_malformed: not a DER PKCS#10 request: bad\n"
        assert "Content-Language" not in headers
        body, _ = _sent(json_error(exc()), accept)
        assert (
            body
            == json.dumps({"error": "csr_malformed", "message": "not a DER PKCS#10 request: bad"}).encode()
        )
    body, headers = _sent(est_error(exc()), "ja-JP,ja;q=0.9,en;q=0.8")
    text = body.decode("utf-8")
    assert (
        text.startswith("csr_malformed: 証明書発行要求（CSR）") and "not a DER PKCS#10 request: bad" in text
    )
    assert headers["Content-Language"] == "ja" and int(headers["Content-Length"]) == len(body)
    doc = json.loads(_sent(json_error(exc()), "ja")[0])
    assert doc["error"] == "csr_malformed" and doc["message"].startswith("証明書発行要求（CSR）")
    # a 503 keeps its Retry-After in either language
    _, headers = _sent(est_error(errors.LintUnavailable("linter closed")), "ja")
    assert headers["Retry-After"] == "30"


# ------------------------------------------------------------------ the CLI option
def test_lang_is_accepted_before_and_after_the_command() -> None:
    parser = build_parser()
    base = ["issue", "--csr", "r.csr", "--out", "c.pem"]
    assert parser.parse_args(base).lang is None
    assert parser.parse_args(["--lang", "ja", *base]).lang == "ja"
    assert parser.parse_args([*base, "--lang", "en"]).lang == "en"
    assert parser.parse_args(["--lang", "ja", "audit", "verify", "--json"]).lang == "ja"
    assert parser.parse_args(["audit", "verify", "--lang", "ja"]).lang == "ja"
    with pytest.raises(SystemExit):
        parser.parse_args(["--lang", "fr", *base])


def test_every_subcommand_takes_lang() -> None:
    missing = []
    pending: list[tuple[str, argparse.ArgumentParser]] = [("ckms", build_parser())]
    while pending:
        name, parser = pending.pop()
        if not any("--lang" in action.option_strings for action in parser._actions):
            missing.append(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend((f"{name} {child}", sub) for child, sub in action.choices.items())
    assert not missing, missing
