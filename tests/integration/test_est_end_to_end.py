"""End to end with standard tools: curl + openssl enrol over EST, verify, revoke, check CRLs.

Items: A.37/A.40 (issuance over mTLS EST), A.38/A.64 (revocation and CRLs), A.05 (policy OID).
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .conftest import CaHome, Daemon, ckms, curl_enroll, make_csr, split_status


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=30)


def enroll_pem(ca: CaHome, tmp_path: Path, cn: str) -> Path:
    csr, _ = make_csr(cn)
    res = curl_enroll(ca, csr, tmp_path)
    body, code = split_status(res.stdout)
    assert code == 200, body
    pkcs7 = openssl("pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(body))
    assert pkcs7.returncode == 0, pkcs7.stderr
    pem = tmp_path / f"{cn}.pem"
    pem.write_bytes(pkcs7.stdout)
    return pem


def test_enrol_with_curl_and_openssl_then_verify_chain(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    key = tmp_path / "dev.key"
    assert openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)).returncode == 0
    csr = openssl("req", "-new", "-key", str(key), "-subj", "/CN=device-curl-1", "-outform", "DER")
    assert csr.returncode == 0, csr.stderr
    res = curl_enroll(ca, csr.stdout, tmp_path)
    body, code = split_status(res.stdout)
    assert code == 200, body
    certs = openssl("pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(body))
    cert_pem = tmp_path / "dev.pem"
    cert_pem.write_bytes(certs.stdout)
    verify = openssl("verify", "-CAfile", str(ca.ca_cert), "-purpose", "sslclient", str(cert_pem))
    assert verify.returncode == 0 and b"OK" in verify.stdout, verify.stdout + verify.stderr

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    assert cert.version == x509.Version.v3
    assert cert.serial_number > 0 and cert.serial_number.bit_length() >= 64
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert (
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert policies[0].policy_identifier.dotted_string.startswith("2.999.")
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == ca.crl_url
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    assert (
        ski.digest
        and aki.key_identifier
        == ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    row = ca.audit("certificate.issue")[-1]
    assert row[0] == "demo-operator" and row[3] == format(cert.serial_number, "x") and row[4] == "success"


def test_cacerts_and_csrattrs_use_rfc7030_encodings(ca: CaHome, daemon: Daemon) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-D", "-", "--cacert", str(ca.ca_cert), f"{ca.est_url}/cacerts"],
        capture_output=True,
        timeout=30,
    )
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"application/pkcs7-mime" in head and b"Content-Transfer-Encoding: base64" in head
    certs = openssl("pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(body))
    assert b"CN=ckms Private CA" in certs.stdout.replace(b" = ", b"=")
    out = subprocess.run(
        ["curl", "-sS", "-D", "-", "--cacert", str(ca.ca_cert), f"{ca.est_url}/csrattrs"],
        capture_output=True,
        timeout=30,
    )
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"application/csrattrs" in head
    parsed = openssl("asn1parse", "-inform", "DER", input=base64.b64decode(body))
    assert parsed.returncode == 0
    assert b"ecdsa-with-SHA256" in parsed.stdout and b"id-ecPublicKey" in parsed.stdout
    assert b"prime256v1" in parsed.stdout and b"secp384r1" in parsed.stdout


def test_revoke_then_serial_in_next_crl_and_openssl_rejects(
    ca: CaHome, daemon: Daemon, tmp_path: Path
) -> None:
    pem = enroll_pem(ca, tmp_path, "device-revoke-1")
    serial = openssl("x509", "-in", str(pem), "-noout", "-serial").stdout.decode().strip().split("=")[1]
    home = ["--home", str(ca.home)]
    out = ckms("revoke", "--yes", *home, "--serial", serial, "--reason", "keyCompromise")
    assert "revoked" in out.stdout
    # The publisher picks the revocation up by itself, whichever worker took it: it polls the database
    # every second, so the serial is published within seconds (the configured bound is 60 s).
    crl_der = tmp_path / "full.crl"
    revoked_at = time.monotonic()
    deadline = revoked_at + 10
    while True:
        ckms("crl", "fetch", *home, "--out", str(crl_der))
        text = openssl("crl", "-inform", "DER", "-in", str(crl_der), "-noout", "-text").stdout.decode()
        if serial.upper() in text.upper().replace(":", "") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert serial.upper() in text.upper(), text
    assert "Key Compromise" in text
    crl_pem = openssl("crl", "-inform", "DER", "-in", str(crl_der)).stdout
    bundle = tmp_path / "ca+crl.pem"
    bundle.write_bytes(ca.ca_cert.read_bytes() + crl_pem)
    verify = openssl("verify", "-crl_check", "-CAfile", str(bundle), str(pem))
    assert verify.returncode != 0 and b"certificate revoked" in verify.stdout + verify.stderr
    # An unrevoked certificate still verifies against the same CRL.
    good = enroll_pem(ca, tmp_path, "device-good-1")
    assert openssl("verify", "-crl_check", "-CAfile", str(bundle), str(good)).returncode == 0
    assert any(
        r[4] == "success" and r[3] == serial.lower().lstrip("0") for r in ca.audit("certificate.revoke")
    )


def test_forced_publication_and_delta_crl(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    home = ["--home", str(ca.home)]
    before = x509.load_der_x509_crl(_fetch(ca, tmp_path, "full"))
    pem = enroll_pem(ca, tmp_path, "device-delta-1")
    serial = x509.load_pem_x509_certificate(pem.read_bytes()).serial_number
    ckms("revoke", "--yes", *home, "--serial", format(serial, "x"), "--reason", "superseded")
    ckms("crl", "publish", *home)
    full = x509.load_der_x509_crl(_fetch(ca, tmp_path, "full"))
    delta = x509.load_der_x509_crl(_fetch(ca, tmp_path, "delta"))
    number = full.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert full.next_update_utc is not None and full.next_update_utc > full.last_update_utc
    assert full.get_revoked_certificate_by_serial_number(serial) is not None
    indicator = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number <= number
    assert delta.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert delta.get_revoked_certificate_by_serial_number(serial) is not None
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    assert full.is_signature_valid(ca_cert.public_key()) and delta.is_signature_valid(ca_cert.public_key())
    # openssl uses the delta on top of the base CRL.
    base_pem = openssl("crl", "-inform", "DER", input=_fetch(ca, tmp_path, "base")).stdout
    delta_pem = openssl("crl", "-inform", "DER", input=_fetch(ca, tmp_path, "delta")).stdout
    bundle = tmp_path / "ca+base+delta.pem"
    bundle.write_bytes(ca.ca_cert.read_bytes() + base_pem + delta_pem)
    verify = openssl("verify", "-crl_check", "-use_deltas", "-CAfile", str(bundle), str(pem))
    assert verify.returncode != 0 and b"revoked" in verify.stdout + verify.stderr


def _fetch(ca: CaHome, tmp_path: Path, which: str) -> bytes:
    out = tmp_path / f"{which}.crl"
    ckms("crl", "fetch", "--home", str(ca.home), "--which", which, "--out", str(out))
    return out.read_bytes()


def test_reenrol_keeps_subject_and_issues_new_certificate(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    first = x509.load_pem_x509_certificate(enroll_pem(ca, tmp_path, "device-renew-1").read_bytes())
    csr, _ = make_csr("device-renew-1")
    body, code = split_status(curl_enroll(ca, csr, tmp_path, op="simplereenroll").stdout)
    assert code == 200, body
    renewed = x509.load_pem_x509_certificate(
        openssl("pkcs7", "-inform", "DER", "-print_certs", input=base64.b64decode(body)).stdout
    )
    assert renewed.subject == first.subject and renewed.serial_number != first.serial_number
    assert ca.audit("certificate.reissue")[-1][3] == format(renewed.serial_number, "x")
    # The renewed certificate is a new one; the first stays valid until it is revoked.
    with ca.db() as conn:
        status = conn.execute(
            "SELECT status FROM certificates WHERE serial=?", (format(first.serial_number, "x"),)
        ).fetchone()[0]
    assert status == "valid"
    csr_other, _ = make_csr("device-never-issued")
    body, code = split_status(curl_enroll(ca, csr_other, tmp_path, op="simplereenroll").stdout)
    assert code == 400 and b"no valid certificate" in body


def test_cli_issue_and_lookup(ca: CaHome, daemon: Daemon, tmp_path: Path) -> None:
    csr, _ = make_csr("device-cli-1")
    (tmp_path / "dev.csr").write_bytes(csr)
    out = tmp_path / "dev.pem"
    ckms("issue", "--home", str(ca.home), "--csr", str(tmp_path / "dev.csr"), "--out", str(out))
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    shown = ckms("cert", "show", "--home", str(ca.home), "--serial", format(cert.serial_number, "X"))
    assert '"status": "valid"' in shown.stdout and "device-cli-1" in shown.stdout
    # The same request again is answered with the same certificate, not a second one.
    again = tmp_path / "again.pem"
    ckms("issue", "--home", str(ca.home), "--csr", str(tmp_path / "dev.csr"), "--out", str(again))
    assert again.read_bytes() == out.read_bytes()
    # Auditors may look but not issue; the refusal is clear.
    denied = ckms(
        "issue",
        "--home",
        str(ca.home),
        "--role",
        "auditor",
        "--csr",
        str(tmp_path / "dev.csr"),
        "--out",
        str(tmp_path / "x.pem"),
        check=False,
    )
    assert denied.returncode == 1 and "role auditor may not perform certificate.issue" in denied.stderr


def test_health(ca: CaHome, daemon: Daemon) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca.ca_cert), ca.est_url.replace("/.well-known/est", "/health")],
        capture_output=True,
        timeout=30,
    )
    assert b'"status": "ok"' in out.stdout and b'"hsm": "ok"' in out.stdout
