"""Bad input gets a clear error and creates nothing (A.37, A.40, A.61; E.05 d).

Every case goes through the real daemon with curl, checks the HTTP status and the EST error
text, that no certificate row appeared, and that the refusal is in the audit trail.
"""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .conftest import CaHome, Daemon, ckms, curl_enroll, make_csr, split_status


def _rsa_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-rsa")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _wrongly_signed() -> bytes:
    der = bytearray(make_csr("device-badsig")[0])
    der[-5] ^= 0x01  # flip a bit inside the signature
    return bytes(der)


def _p521_csr() -> bytes:
    return make_csr("device-p521", curve=ec.SECP521R1())[0]


CASES = {
    "malformed": (b"\x30\x82\x01\x00garbage-not-a-csr", 400, b"csr_malformed"),
    "wrongly-signed": (None, 400, b"csr_bad_signature"),
    "oversized": (b"\x30" + b"\x00" * 5000, 400, b"csr_too_large"),
    "rsa-key": (None, 400, b"csr_key_type"),
    "p521-key": (None, 400, b"csr_key_type"),
    "bad-device-id": (make_csr("bad id with spaces!")[0], 400, b"csr_subject_policy"),
    "foreign-san": (
        make_csr("device-san", sans=[x509.RFC822Name("x@example.com")])[0],
        400,
        b"csr_san_policy",
    ),
    "extra-subject-attribute": (
        make_csr("device-attr", extra_subject=[x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@example.com")])[
            0
        ],
        400,
        b"csr_subject_policy",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_csr_is_rejected_and_creates_nothing(
    case: str, ca: CaHome, daemon: Daemon, tmp_path: Path
) -> None:
    der, status, code = CASES[case]
    if der is None:
        der = {"wrongly-signed": _wrongly_signed, "rsa-key": _rsa_csr, "p521-key": _p521_csr}[case]()
    before = ca.certificate_count()
    refusals = len(ca.audit("certificate.issue"))
    body, got = split_status(curl_enroll(ca, der, tmp_path).stdout)
    assert got == status and code in body, body
    assert len(body) > len(code) + 10  # a sentence, not just a code
    assert ca.certificate_count() == before
    latest = ca.audit("certificate.issue")
    assert len(latest) == refusals + 1 and latest[-1][4] == "denied" and code.decode() in latest[-1][5]


def test_body_that_is_not_base64(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    before = ca.certificate_count()
    body, got = split_status(curl_enroll(ca, b"", tmp_path, body=b"%%% not base64 %%%").stdout)
    assert got == 400 and b"not base64" in body
    assert ca.certificate_count() == before


def test_missing_client_certificate_is_401(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    before = ca.certificate_count()
    body, got = split_status(curl_enroll(ca, make_csr()[0], tmp_path, role=None).stdout)
    assert got == 401 and b"client certificate is required" in body
    assert ca.certificate_count() == before
    assert ca.audit("auth.deny")[-1][4] == "denied"


def _foreign_identity(tmp_path: Path) -> tuple[Path, Path]:
    """A client certificate from another CA, with the same subject as a real operator."""
    now = dt.datetime.now(dt.UTC)
    other_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms Private CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-operator")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
    )
    cert, key = tmp_path / "foreign.pem", tmp_path / "foreign.key"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_client_certificate_from_another_ca_fails_the_handshake(
    ca: CaHome, daemon: Daemon, tmp_path: Path
) -> None:
    before = ca.certificate_count()
    foreign = _foreign_identity(tmp_path)
    res = curl_enroll(ca, make_csr()[0], tmp_path, role=None, cert_key=foreign)
    assert res.returncode != 0 and not res.stdout.strip().endswith(
        b"200"
    )  # TLS 1.3: the server's alert ends it
    # ckms's own client explains what the bare close means.
    (tmp_path / "dev.csr").write_bytes(make_csr("device-foreign")[0])
    out = ckms(
        "issue",
        "--home",
        str(ca.home),
        "--cert",
        str(foreign[0]),
        "--key",
        str(foreign[1]),
        "--csr",
        str(tmp_path / "dev.csr"),
        "--out",
        str(tmp_path / "x.pem"),
        check=False,
    )
    assert out.returncode == 1 and "refused the client certificate" in out.stderr, out.stderr
    assert ca.certificate_count() == before


def test_device_certificate_is_not_an_operator(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    """A certificate this CA issued to a device authenticates at TLS level but is no entity."""
    csr, key = make_csr("device-as-client")
    body, got = split_status(curl_enroll(ca, csr, tmp_path).stdout)
    assert got == 200
    pem = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
        input=base64.b64decode(body),
        capture_output=True,
    ).stdout
    cert, keyf = tmp_path / "dev.pem", tmp_path / "dev.key"
    cert.write_bytes(pem)
    keyf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    before = ca.certificate_count()
    body, got = split_status(
        curl_enroll(ca, make_csr("device-x")[0], tmp_path, role=None, cert_key=(cert, keyf)).stdout
    )
    assert got == 403 and b"registered entity" in body
    assert ca.certificate_count() == before


def test_wrong_content_type_and_unknown_profile(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    req = tmp_path / "r.b64"
    req.write_bytes(base64.encodebytes(make_csr()[0]))
    cert, key = ca.cred("operator")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(ca.ca_cert),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            f"@{req}",
            "-w",
            "\n%{http_code}",
            f"{ca.est_url}/simpleenroll",
        ],
        capture_output=True,
        timeout=30,
    )
    body, got = split_status(out.stdout)
    assert got == 400 and b"application/pkcs10" in body
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(ca.ca_cert),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{req}",
            "-w",
            "\n%{http_code}",
            f"{ca.est_url}/identity/simpleenroll",
        ],
        capture_output=True,
        timeout=30,
    )
    body, got = split_status(out.stdout)
    assert got == 403 and b"may not request profile 'identity'" in body
