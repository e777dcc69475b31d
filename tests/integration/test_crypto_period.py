"""Crypto-periods end to end (issue 14 part 4; A.59, A.62): a request whose validity would pass the CA's
expiry or an algorithm's end of life is refused over EST with a clear 400, audited, and nothing is
stored; it is never issued with a shortened validity.

A real ``ckms ca init`` (P-384 CA, SoftHSM), a real daemon and curl. The algorithm end of life is
moved to a near date through ``[algorithms] secure_until`` so that "past 2040" is testable today.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from .conftest import CaHome, Daemon, ckms, curl_enroll, init_home, make_csr, split_status

CA_DAYS = 900


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaHome, Daemon]]:
    ca = init_home(
        tmp_path_factory.mktemp("period") / "home", "--curve", "P-384", "--ca-validity-days", str(CA_DAYS)
    )
    in_two_years = (dt.datetime.now(dt.UTC) + dt.timedelta(days=730)).date()
    # "2040" brought forward; 800 days fit the CA but pass P-256's end of life
    _configure(ca, device_days=800, algorithms={"secure_until": {"P-256": in_two_years}})
    daemon = Daemon(ca)
    daemon.start()
    yield ca, daemon
    daemon.stop()


def _configure(ca: CaHome, *, device_days: int, algorithms: dict | None = None) -> None:
    path = ca.home / "ckms.toml"
    raw = tomllib.loads(path.read_text())
    if algorithms is not None:
        raw["algorithms"] = algorithms
    raw["profiles"]["device"]["validity_days"] = device_days
    path.write_text(tomli_w.dumps(raw))
    ckms("selftest", "--home", str(ca.home), "--record")  # an administrator records a config change (E.32)


def _refused(ca: CaHome, tmp: Path, csr: bytes, op: str) -> tuple[bytes, int]:
    before = ca.certificate_count()
    body, status = split_status(curl_enroll(ca, csr, tmp, op=op).stdout)
    assert ca.certificate_count() == before, "a refused request stored a certificate"
    return body, status


def test_p256_key_past_the_algorithms_end_of_life_is_refused(limited, tmp_path: Path) -> None:
    ca, _ = limited
    body, status = _refused(ca, tmp_path, make_csr("device-p256-long")[0], "simpleenroll")
    assert status == 400, body
    assert b"validity_beyond_algorithm" in body
    assert b"refused, not shortened" in body and b"P-256" in body
    refusals = [r for r in ca.audit("certificate.issue") if "validity_beyond_algorithm" in (r[5] or "")]
    assert refusals and refusals[-1][4] != "success", refusals


def test_p384_key_under_the_same_profile_gets_the_full_validity(limited, tmp_path: Path) -> None:
    ca, _ = limited
    csr, _key = make_csr("device-p384-long", curve=ec.SECP384R1())
    body, status = split_status(curl_enroll(ca, csr, tmp_path).stdout)
    assert status == 200, body

    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))[0]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400
    assert 800 <= days <= 800.01, days  # the profile's validity (plus the backdate), not shortened


def test_profile_past_the_ca_certificate_is_refused(limited, tmp_path: Path) -> None:
    ca, daemon = limited
    daemon.stop()
    _configure(ca, device_days=CA_DAYS + 10)  # now the profile itself passes the CA's expiry
    daemon.start()
    csr, _key = make_csr("device-ca-long", curve=ec.SECP384R1())
    body, status = _refused(ca, tmp_path, csr, "simpleenroll")
    assert status == 400, body
    assert b"validity_beyond_ca" in body and b"the CA certificate's expiry" in body
    detail = [json.loads(r[5]) for r in ca.audit("certificate.issue") if "validity_beyond_ca" in (r[5] or "")]
    assert detail, "the refusal is not on the audit trail"
