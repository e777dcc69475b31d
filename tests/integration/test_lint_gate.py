"""Pre-issuance linting blocks a certificate before the HSM signs it (A.37, A.61).

A profile is misconfigured on purpose (keyCertSign on an end-entity certificate, an RFC 5280
error); the daemon must refuse to issue, store nothing and record why.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import Daemon, ckms, curl_enroll, init_home, make_csr, split_status


def test_lint_error_blocks_issuance_and_is_audited(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "lint")
    config = ca.home / "ckms.toml"
    text = config.read_text()
    marker = '[profiles.device]\nvalidity_days = 1825\nkey_usage = [\n    "digital_signature",\n]'
    assert marker in text
    config.write_text(
        text.replace(
            marker, marker.replace('"digital_signature",', '"digital_signature",\n    "key_cert_sign",')
        )
    )
    ckms("selftest", "--home", str(ca.home), "--record")  # an administrator records a config change (E.32)
    daemon = Daemon(ca)
    daemon.start()
    try:
        before = ca.certificate_count()
        body, status = split_status(curl_enroll(ca, make_csr("device-lint")[0], tmp_path).stdout)
        assert status == 500 and b"lint_failed" in body and b"pre-issuance lint blocked" in body, body
        assert ca.certificate_count() == before
        refusal = ca.audit("certificate.issue")[-1]
        assert refusal[0] == "demo-operator" and refusal[4] == "error" and "lint_failed" in refusal[5]
    finally:
        daemon.stop()
