"""The CA daemon's parsers and authority under hostile clients (issue 11, items 4–7 and 9).

Everything goes through the real daemon over mutual TLS: a raw TLS socket where the test must control how
the bytes arrive (segments, chunks, broken gzip), curl and openssl where a standard client shows the
behaviour. Each refusal must be a 4xx with a clear EST or JSON error, leave an audit record, issue
nothing, and leave no traceback in the daemon's log.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fuzz import hostile_csr

from .conftest import CaHome, Daemon, ckms, curl_enroll, init_home, make_csr, split_status

EST = "/.well-known/est"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


def _tls(
    ca: CaHome, role: str | None = "operator", cert_key: tuple[Path, Path] | None = None
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    creds = cert_key or (ca.cred(role) if role else None)
    if creds:
        ctx.load_cert_chain(str(creds[0]), str(creds[1]))
    host, port = ca.est_url.split("//")[1].split("/")[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    return ctx.wrap_socket(sock, server_hostname=host)


def send(
    ca: CaHome,
    method: str,
    path: str,
    parts: list[bytes],
    headers: dict[str, str],
    *,
    role: str | None = "operator",
    pause: float = 0.15,
) -> Reply:
    """One request whose head and body go out as the given pieces, each in its own TLS record and TCP
    segment (``TCP_NODELAY``, a pause between them), then the whole answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with _tls(ca, role) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head.encode())
        for part in parts:
            time.sleep(pause)
            sock.sendall(part)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Reply(int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body)


def thirds(data: bytes) -> list[bytes]:
    n = len(data) // 3
    return [data[:n], data[n : 2 * n], data[2 * n :]]


def chunked(pieces: list[bytes]) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


@pytest.fixture
def clean_log(daemon: Daemon) -> Iterator[None]:
    """The test's part of the daemon log must not contain a traceback."""
    start = daemon.log.stat().st_size
    yield
    time.sleep(0.2)
    with daemon.log.open("rb") as f:
        f.seek(start)
        added = f.read().decode(errors="replace")
    assert "Traceback" not in added and "Unhandled exception" not in added, added[-3000:]


def issued_subjects(ca: CaHome) -> list[str]:
    with ca.db() as conn:
        return [r[0] for r in conn.execute("SELECT subject FROM certificates WHERE kind='end-entity'")]


# --- item 4: bodies are read whole however they arrive ---------------------------------------------------


def test_csr_in_three_tcp_segments_is_issued(ca: CaHome, daemon: Daemon, clean_log: None) -> None:
    body = base64.encodebytes(make_csr("device-three-segments")[0])
    headers = {"Content-Type": "application/pkcs10", "Content-Length": str(len(body))}
    reply = send(ca, "POST", f"{EST}/simpleenroll", thirds(body), headers)
    assert reply.status == 200, reply.body
    assert "CN=device-three-segments" in issued_subjects(ca)


def test_csr_in_three_chunks_is_issued(ca: CaHome, daemon: Daemon, clean_log: None) -> None:
    body = base64.encodebytes(make_csr("device-three-chunks")[0])
    headers = {"Content-Type": "application/pkcs10", "Transfer-Encoding": "chunked"}
    reply = send(ca, "POST", f"{EST}/simpleenroll", chunked(thirds(body)), headers)
    assert reply.status == 200, reply.body
    assert "CN=device-three-chunks" in issued_subjects(ca)


def test_gzip_encoded_csr_in_segments_is_issued(ca: CaHome, daemon: Daemon, clean_log: None) -> None:
    body = gzip.compress(base64.encodebytes(make_csr("device-gzip")[0]))
    headers = {
        "Content-Type": "application/pkcs10",
        "Content-Encoding": "gzip",
        "Content-Length": str(len(body)),
    }
    assert send(ca, "POST", f"{EST}/simpleenroll", thirds(body), headers).status == 200


def test_body_over_the_limit_is_refused_however_it_arrives(
    ca: CaHome, daemon: Daemon, clean_log: None
) -> None:
    big = base64.encodebytes(b"\x30" * 8000)
    headers = {"Content-Type": "application/pkcs10", "Transfer-Encoding": "chunked"}
    reply = send(
        ca,
        "POST",
        f"{EST}/simpleenroll",
        chunked([big[i : i + 1000] for i in range(0, len(big), 1000)]),
        headers,
        pause=0.01,
    )
    assert reply.status == 400 and reply.body.startswith(b"csr_too_large:"), reply.body


# --- item 5: every parse failure is a 4xx, an EST/JSON error and an audit record ----------------------------


@pytest.mark.parametrize("name", sorted(hostile_csr.HOSTILE))
def test_unusual_requests_get_4xx_and_an_audit_record(
    name: str, ca: CaHome, daemon: Daemon, tmp_path: Path, clean_log: None
) -> None:
    maker, code = hostile_csr.HOSTILE[name]
    before, refusals = ca.certificate_count(), len(ca.audit("certificate.issue"))
    body, status = split_status(curl_enroll(ca, maker(), tmp_path).stdout)
    assert status == 400 and body.startswith(code.encode() + b": "), body
    assert ca.certificate_count() == before
    records = ca.audit("certificate.issue")
    assert len(records) == refusals + 1
    who, _, _, _, outcome, detail = records[-1]
    assert who == "demo-operator" and outcome == "denied" and json.loads(detail)["code"] == code


def test_broken_gzip_is_400_audited_and_closes_the_connection(
    ca: CaHome, daemon: Daemon, clean_log: None
) -> None:
    refusals = len(ca.audit("certificate.issue"))
    body = b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"this is not deflate data at all"
    headers = {
        "Content-Type": "application/pkcs10",
        "Content-Encoding": "gzip",
        "Content-Length": str(len(body)),
    }
    reply = send(ca, "POST", f"{EST}/simpleenroll", [body], headers)
    assert reply.status == 400 and reply.body.startswith(b"body_unreadable: "), reply.body
    assert reply.headers.get("connection", "").lower() == "close"
    records = ca.audit("certificate.issue")
    assert len(records) == refusals + 1 and json.loads(records[-1][5])["code"] == "body_unreadable"


def test_malformed_http_header_is_400_without_a_traceback(
    ca: CaHome, daemon: Daemon, clean_log: None
) -> None:
    """aiohttp's own parser refuses it (400); the daemon logs one warning line, not a traceback."""
    body = base64.encodebytes(make_csr("device-bad-header")[0])
    headers = {"Content-Type": "application/pkcs\x7f10", "Content-Length": str(len(body))}
    reply = send(ca, "POST", f"{EST}/simpleenroll", [body], headers)
    assert reply.status == 400, reply.body
    assert "CN=device-bad-header" not in issued_subjects(ca)
    time.sleep(0.2)
    assert "malformed HTTP request from" in daemon.log.read_text(errors="replace")


def test_deeply_nested_json_is_400_and_audited(ca: CaHome, daemon: Daemon, clean_log: None) -> None:
    refusals = len(ca.audit("certificate.revoke"))
    body = b"[" * 5000 + b"]" * 5000
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    reply = send(ca, "POST", "/api/v1/revocations", [body], headers)
    assert reply.status == 400 and reply.json["error"] == "bad_json", reply.body
    assert "nested 5000 levels" in str(reply.json["message"])
    records = ca.audit("certificate.revoke")
    assert len(records) == refusals + 1 and records[-1][0] == "demo-operator"
    assert json.loads(records[-1][5])["code"] == "bad_json"


def test_unknown_est_label_is_404_and_audited(
    ca: CaHome, daemon: Daemon, tmp_path: Path, clean_log: None
) -> None:
    refusals = len(ca.audit("certificate.issue"))
    body, status = split_status(
        curl_enroll(ca, make_csr("device-label")[0], tmp_path, op="no-such-label/simpleenroll").stdout
    )
    assert status == 404 and body.startswith(b"est_unknown_label: "), body
    records = ca.audit("certificate.issue")
    assert len(records) == refusals + 1 and records[-1][3] == "no-such-label"
    for op in ("cacerts", "csrattrs"):
        reply = send(ca, "GET", f"{EST}/no-such-label/{op}", [], {}, role=None)
        assert reply.status == 404 and reply.body.startswith(b"est_unknown_label"), (op, reply.body)
    assert send(ca, "GET", f"{EST}/device/csrattrs", [], {}, role=None).status == 200


# --- item 6: duplicates are audited; a revoked one is 409 ----------------------------------------------------


def test_resent_csr_is_audited_and_refused_once_revoked(
    ca: CaHome, daemon: Daemon, tmp_path: Path, clean_log: None
) -> None:
    csr, _ = make_csr("device-resend")
    body, status = split_status(curl_enroll(ca, csr, tmp_path).stdout)
    assert status == 200, body
    issued = len(ca.audit("certificate.issue"))
    again, status = split_status(curl_enroll(ca, csr, tmp_path).stdout)
    assert status == 200 and again == body  # the same certificate, not a second one
    records = ca.audit("certificate.issue")
    assert len(records) == issued + 1 and records[-1][4] == "success"
    serial = records[-1][3]
    assert json.loads(records[-1][5])["reused"] is True
    ckms("revoke", "--yes", "--home", str(ca.home), "--serial", serial, "--reason", "keyCompromise")
    body, status = split_status(curl_enroll(ca, csr, tmp_path).stdout)
    assert status == 409 and body.startswith(b"csr_duplicate_revoked: ") and serial.encode() in body, body
    last = ca.audit("certificate.issue")[-1]
    assert last[4] == "denied" and json.loads(last[5])["code"] == "csr_duplicate_revoked"


# --- item 7: authorisation before parsing or lookup --------------------------------------------------------


@pytest.mark.parametrize("op", ["simpleenroll", "simplereenroll"])
def test_role_is_checked_before_the_body_is_read(
    op: str, ca: CaHome, daemon: Daemon, tmp_path: Path, clean_log: None
) -> None:
    """An auditor sending garbage learns it may not issue, not what is wrong with its request."""
    body, status = split_status(
        curl_enroll(ca, b"", tmp_path, role="auditor", op=op, body=b"%% garbage %%").stdout
    )
    assert status == 403 and body.startswith(b"forbidden: ") and b"certificate.issue" in body, body
    reply = send(ca, "POST", "/api/v1/revocations", [b"{not json"], {"Content-Length": "9"}, role="auditor")
    assert reply.status == 403 and reply.json["error"] == "forbidden", reply.body
    reply = send(ca, "GET", "/api/v1/certificates/not-hex!", [], {}, role=None)
    assert reply.status == 401


# --- item 9: a device renews itself when, and only when, the CA allows it -----------------------------------


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(["openssl", *args], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out


def _curl_reenrol(ca: CaHome, tmp: Path, cert: Path, key: Path, csr_der: bytes) -> tuple[bytes, int]:
    out = curl_enroll(ca, csr_der, tmp, cert_key=(cert, key), op="simplereenroll")
    assert not out.stdout.endswith(b"\n000"), out.stderr  # curl got no HTTP answer at all
    return split_status(out.stdout)


def _key_and_csr(key: Path, cn: str, san: str) -> bytes:
    """A P-256 key at ``key`` and its DER request for CN and SAN, made with openssl as a device would."""
    _openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key))
    return _openssl(
        "req",
        "-new",
        "-key",
        str(key),
        "-subj",
        f"/CN={cn}",
        "-addext",
        f"subjectAltName={san}",
        "-outform",
        "DER",
    ).stdout


def _device(ca: CaHome, tmp: Path, cn: str, san: str) -> tuple[Path, Path]:
    """A device key and certificate made the standard way: openssl makes the request, curl enrols it."""
    key = tmp / f"{cn}.key"
    body, status = split_status(curl_enroll(ca, _key_and_csr(key, cn, san), tmp).stdout)
    assert status == 200, body
    cert = tmp / f"{cn}.pem"
    cert.write_bytes(
        subprocess.run(
            ["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
            input=base64.b64decode(body),
            capture_output=True,
        ).stdout
    )
    return cert, key


def _renewal_csr(tmp: Path, cn: str, san: str) -> tuple[bytes, Path]:
    key = tmp / f"{cn}-new-{time.monotonic_ns()}.key"
    return _key_and_csr(key, cn, san), key


def test_device_reenrolment_is_refused_when_off(
    ca: CaHome, daemon: Daemon, tmp_path: Path, clean_log: None
) -> None:
    san = "URI:urn:ckms:device:dev-off-1"
    cert, key = _device(ca, tmp_path, "dev-off-1", san)
    serial = format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")
    before = ca.certificate_count()
    body, status = _curl_reenrol(ca, tmp_path, cert, key, _renewal_csr(tmp_path, "dev-off-1", san)[0])
    assert status == 403 and body.startswith(b"device_reenrolment_disabled: ") and b"terminal" in body, body
    assert ca.certificate_count() == before
    last = ca.audit("certificate.reissue")[-1]
    assert last[:2] == (f"device:{serial}", "device") and last[4] == "denied"


@pytest.fixture(scope="module")
def renewing_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaHome]:
    """A CA with ``[issuance] device_reenrolment = true``, recorded by an administrator (E.32)."""
    home = init_home(tmp_path_factory.mktemp("renewing") / "home")
    config = home.home / "ckms.toml"
    text = config.read_text()
    assert "[issuance]\n" in text
    config.write_text(
        text.replace("[issuance]\n", "[issuance]\ndevice_reenrolment = true\n").replace(
            "workers = 0", "workers = 1"
        )
    )
    ckms("selftest", "--home", str(home.home), "--record")
    d = Daemon(home)
    d.start()
    yield home
    d.stop()


def test_device_renews_itself_with_its_own_certificate_when_on(renewing_ca: CaHome, tmp_path: Path) -> None:
    ca, san = renewing_ca, "URI:urn:ckms:device:dev-on-1"
    cert, key = _device(ca, tmp_path, "dev-on-1", san)
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    csr, new_key = _renewal_csr(tmp_path, "dev-on-1", san)
    body, status = _curl_reenrol(ca, tmp_path, cert, key, csr)
    assert status == 200, body
    pem = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
        input=base64.b64decode(body),
        capture_output=True,
    ).stdout
    new = x509.load_pem_x509_certificate(pem)
    assert new.subject == old.subject and new.serial_number != old.serial_number
    assert (
        new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        == old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    new_pub = serialization.load_pem_private_key(new_key.read_bytes(), None).public_key()
    assert isinstance(new_pub, ec.EllipticCurvePublicKey) and new.public_key() == new_pub  # the new key
    old_serial = format(old.serial_number, "x")
    who, role, _, target, outcome, detail = ca.audit("certificate.reissue")[-1]
    assert (who, role, outcome, target) == (
        f"device:{old_serial}",
        "device",
        "success",
        format(new.serial_number, "x"),
    )
    assert json.loads(detail)["renews"] == old_serial
    # The renewed certificate renews itself in turn (it is a device certificate of this CA like the first).
    new_cert = tmp_path / "renewed.pem"
    new_cert.write_bytes(pem)
    body, status = _curl_reenrol(ca, tmp_path, new_cert, new_key, _renewal_csr(tmp_path, "dev-on-1", san)[0])
    assert status == 200, body


def test_device_cannot_change_its_name_or_renew_once_revoked(renewing_ca: CaHome, tmp_path: Path) -> None:
    ca, san = renewing_ca, "URI:urn:ckms:device:dev-on-2"
    cert, key = _device(ca, tmp_path, "dev-on-2", san)
    body, status = _curl_reenrol(ca, tmp_path, cert, key, _renewal_csr(tmp_path, "dev-other", san)[0])
    assert status == 400 and body.startswith(b"csr_reenroll_subject: "), body
    body, status = _curl_reenrol(
        ca, tmp_path, cert, key, _renewal_csr(tmp_path, "dev-on-2", "URI:urn:ckms:device:x")[0]
    )
    assert status == 400 and body.startswith(b"csr_reenroll_subject: "), body
    serial = format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")
    ckms("revoke", "--yes", "--home", str(ca.home), "--serial", serial, "--reason", "keyCompromise")
    body, status = _curl_reenrol(ca, tmp_path, cert, key, _renewal_csr(tmp_path, "dev-on-2", san)[0])
    assert status == 403 and body.startswith(b"device_revoked: "), body
    assert ca.audit("certificate.reissue")[-1][:2] == (f"device:{serial}", "device")
