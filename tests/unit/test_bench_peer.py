"""ckms_lab.bench_peer without step-ca: the one-time tokens carry what step-ca's JWK provisioner checks,
the keep-alive client reads both body framings Go's net/http sends, and the throwaway CA's ca.json
points step-ca at an issuing key that lives in SoftHSM2."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from ckms_lab import bench_peer


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_token_is_an_es256_jws_with_step_ca_claims() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = bench_peer.public_jwk(key)
    aud = "https://127.0.0.1:9443/1.0/sign"
    token = bench_peer.sign_token(key, jwk["kid"], audience=aud, subject="peer-7", now=1_000_000, lifetime=60)
    head_b64, claims_b64, sig_b64 = token.split(".")
    header, claims = json.loads(_unb64(head_b64)), json.loads(_unb64(claims_b64))
    assert header == {"alg": "ES256", "kid": jwk["kid"], "typ": "JWT"}
    assert claims["iss"] == bench_peer.PROVISIONER and claims["aud"] == aud
    assert claims["sub"] == "peer-7" and claims["sans"] == ["peer-7"]
    assert claims["nbf"] == claims["iat"] == 1_000_000 and claims["exp"] == 1_000_060
    raw = _unb64(sig_b64)
    assert len(raw) == 64  # JWS ES256: r || s, 32 bytes each, not DER
    signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(signature, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    other = bench_peer.sign_token(key, jwk["kid"], audience=aud, subject="peer-7", now=1_000_000, lifetime=60)
    assert json.loads(_unb64(other.split(".")[1]))["jti"] != claims["jti"]  # one-time: a new jti each


def test_jwk_kid_is_the_rfc7638_thumbprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = bench_peer.public_jwk(key)
    nums = key.public_key().public_numbers()
    assert _unb64(jwk["x"]) == nums.x.to_bytes(32, "big") and _unb64(jwk["y"]) == nums.y.to_bytes(32, "big")
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'.encode()
    assert _unb64(jwk["kid"]) == hashlib.sha256(canonical).digest()


def _connection_reading(
    reply: bytes, issuer: x509.Certificate | None = None
) -> tuple[bench_peer.StepConnection, socket.socket]:
    client, server = socket.socketpair()
    conn = bench_peer.StepConnection.__new__(bench_peer.StepConnection)
    conn._sock = client  # type: ignore[assignment]
    conn._buf = b""
    conn._issuer = issuer
    conn.checked = False

    def serve() -> None:
        server.recv(65536)
        server.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return conn, server


def test_client_reads_chunked_and_content_length_bodies() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    conn, server = _connection_reading(chunked + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert conn.request(b"GET / HTTP/1.1\r\n\r\n") == (201, b"hello world")
    assert conn.request(b"GET / HTTP/1.1\r\n\r\n") == (200, b"ok")  # the second reply, already buffered
    conn.close()
    server.close()


def _cert(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .sign(signer, hashes.SHA256())
    )


def _sign_reply(cert: x509.Certificate) -> bytes:
    body = json.dumps({"crt": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()
    return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_first_answer_must_be_a_certificate_for_the_csr_from_the_issuing_key() -> None:
    ca_key, leaf_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("issuing", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuing")]), ca_key)
    good = _cert("peer-1", leaf_key, ca.subject, ca_key)
    conn, server = _connection_reading(_sign_reply(good), ca)
    conn.sign(b"POST", "peer-1")
    assert conn.checked
    conn, server = _connection_reading(_sign_reply(good), ca)
    with pytest.raises(RuntimeError, match="expected 'peer-2'"):
        conn.sign(b"POST", "peer-2")
    forged = _cert("peer-1", leaf_key, ca.subject, other_key)
    conn, server = _connection_reading(_sign_reply(forged), ca)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidSignature
        conn.sign(b"POST", "peer-1")
    conn, server = _connection_reading(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")
    with pytest.raises(RuntimeError, match="HTTP 401"):
        conn.sign(b"POST", "peer-1")


def test_ca_json_signs_through_the_hsm_key(tmp_path: Path) -> None:
    ca = bench_peer.setup_step_ca(tmp_path)
    config = json.loads((tmp_path / "ca.json").read_text())
    assert config["kms"]["type"] == "pkcs11" and f"token={bench_peer.TOKEN_LABEL}" in config["kms"]["uri"]
    assert config["key"].startswith("pkcs11:") and config["db"]["type"] == "badgerv2"
    (provisioner,) = config["authority"]["provisioners"]
    assert provisioner["type"] == "JWK" and provisioner["key"]["kid"] == ca.kid
    assert "d" not in provisioner["key"]  # the public half only
    intermediate = x509.load_pem_x509_certificate((tmp_path / "intermediate_ca.crt").read_bytes())
    root = x509.load_pem_x509_certificate(ca.root_pem)
    intermediate.verify_directly_issued_by(root)
    # The intermediate certifies the key pkcs11-tool generated in the token (and can read back).
    pub = (tmp_path / "issuing.pub.der").read_bytes()
    assert (
        intermediate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pub
    )
    assert ca.env["SOFTHSM2_CONF"] == str(tmp_path / "softhsm2.conf")
