"""The real ``ckms`` in Japanese when the locale or ``--lang ja`` asks, English otherwise (issue 16).

A malformed CSR goes through the real CLI to the real daemon: the daemon refuses it with its English
machine code and, because the CLI sent ``Accept-Language: ja``, a Japanese sentence; the CLI wraps it
in its own Japanese. ``--lang en`` (or no Japanese locale) gives exactly the English ckms always printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config

from .conftest import CaHome, Daemon, ckms

MALFORMED = b"\x30\x82\x01\x00garbage-not-a-csr"  # DER-looking, so the CLI sends it and the daemon judges
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# The locale a Japanese operator's shell has; LC_ALL/LC_MESSAGES emptied so the test's own don't win.
JA_LOCALE = {"LANG": "ja_JP.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}


def _issue(ca: CaHome, csr: Path, out: Path, *extra: str, env: dict[str, str] | None = None):  # noqa: ANN202
    return ckms(
        "issue", "--home", str(ca.home), "--csr", str(csr), "--out", str(out), *extra, check=False, env=env
    )


def test_malformed_csr_refusal_in_japanese_then_english(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    csr = tmp_path / "malformed.csr"
    csr.write_bytes(MALFORMED)
    before = ca.certificate_count()

    ja = _issue(ca, csr, tmp_path / "ja.pem", env=JA_LOCALE)
    assert ja.returncode == 1, ja.stderr
    assert ja.stderr.startswith(
        "ckms: エラー: 証明書の発行要求が拒否されました（HTTP 400）: csr_malformed: "
    ), ja.stderr
    assert "証明書発行要求（CSR）の形式が正しくない" in ja.stderr  # the daemon's sentence, in Japanese
    assert "（詳細: " in ja.stderr  # with the parser's own (English) detail kept
    assert "Traceback" not in ja.stderr and not (tmp_path / "ja.pem").exists()

    en = _issue(ca, csr, tmp_path / "en.pem", "--lang", "en", env=JA_LOCALE)
    assert en.returncode == 1, en.stderr
    assert en.stderr.startswith("ckms: error: enrolment refused (HTTP 400): csr_malformed: "), en.stderr
    assert not JAPANESE.search(en.stderr), en.stderr

    # No Japanese locale and no --lang: English, the same bytes as --lang en.
    default = _issue(
        ca, csr, tmp_path / "default.pem", env={"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
    )
    assert default.returncode == 1 and default.stderr == en.stderr

    # --lang ja under an English locale, before the command: Japanese again.
    forced = ckms(
        "--lang", "ja", "issue", "--home", str(ca.home), "--csr", str(csr), "--out", str(tmp_path / "x.pem"),
        check=False, env={"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""},
    )  # fmt: skip
    assert forced.returncode == 1 and forced.stderr.startswith(
        "ckms: エラー: 証明書の発行要求が拒否されました"
    )

    assert ca.certificate_count() == before
    refusals = [row for row in ca.audit("certificate.issue") if "csr_malformed" in row[5]]
    assert len(refusals) >= 4  # every attempt refused and audited, whatever the language


def test_local_refusal_and_json_api_error_in_japanese(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    # A PEM file that is not a request: refused by the CLI itself before anything is sent.
    pem = tmp_path / "broken.pem"
    pem.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgcmVxdWVzdA==\n-----END CERTIFICATE REQUEST-----\n"
    )
    local = _issue(ca, pem, tmp_path / "c.pem", env=JA_LOCALE)
    assert local.returncode == 1 and "PEM 形式の証明書発行要求（CSR）ではありません" in local.stderr, (
        local.stderr
    )

    # The JSON API: the machine code stays English inside the Japanese sentence.
    revoke = ckms(
        "revoke", "--yes", "--home", str(ca.home), "--serial", "not-hex", check=False, env=JA_LOCALE
    )
    assert revoke.returncode == 1, revoke.stderr
    assert revoke.stderr.startswith("ckms: エラー: 要求の内容が正しくありません。"), revoke.stderr
    assert "（HTTP 400、bad_request）" in revoke.stderr and "not-hex" in revoke.stderr
    english = ckms(
        "revoke", "--yes", "--home", str(ca.home), "--serial", "not-hex", "--lang", "en", check=False
    )
    assert english.stderr == (
        "ckms: error: serial 'not-hex' is not a hexadecimal certificate serial number (HTTP 400, bad_request)\n"
    )


def test_daemon_answers_in_the_language_asked_for(ca: CaHome, daemon: Daemon) -> None:
    config = load_config(ca.home)
    creds = Credentials(*ca.cred("operator"))
    headers = {"Content-Type": "application/pkcs10"}
    with CkmsClient(config, creds, lang="ja") as client:
        status, got, body = client.request(
            "POST", "/.well-known/est/simpleenroll", b"%%% not base64 %%%", headers
        )
        assert status == 400 and got.get("content-language") == "ja"
        assert body.decode("utf-8").startswith(
            "csr_malformed: 本文が base64 ではありません: EST では、DER 形式の PKCS#10 証明書発行要求"
        )
        status, _, body = client.request("GET", "/api/v1/certificates/zz-not-hex")
        doc = json.loads(body)
        assert status == 400 and doc["error"] == "bad_request" and JAPANESE.search(doc["message"])
    with CkmsClient(config, creds) as client:  # the library's default: English
        status, got, body = client.request(
            "POST", "/.well-known/est/simpleenroll", b"%%% not base64 %%%", headers
        )
        assert status == 400 and "content-language" not in got
        assert (
            body == b"csr_malformed: body is not base64: EST expects a base64-encoded DER PKCS#10 request\n"
        )
