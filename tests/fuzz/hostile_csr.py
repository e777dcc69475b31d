"""Well-formed but unusual PKCS#10 requests, built by hand because pyca/cryptography refuses to build them.

Each is valid DER and correctly signed by its own key, so the daemon's answer can only come from the
checks under test: unknown signature or curve OIDs, explicit curve parameters, a duplicated extension,
subjectAltName forms the CA never issues (x400Address, ediPartyName). The unit tests, the daemon tests
and the fuzz tests share them.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.x509.der import oid, tlv

ECDSA_SHA256 = "1.2.840.10045.4.3.2"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
P256 = "1.2.840.10045.3.1.7"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
SUBJECT_ALT_NAME = "2.5.29.17"
COMMON_NAME = "2.5.4.3"


def integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=False) if value else b"\x00"
    return tlv(0x02, raw)


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def subject(cn: str) -> bytes:
    return seq(tlv(0x31, seq(oid(COMMON_NAME), tlv(0x0C, cn.encode()))))


def extension(ext_oid: str, value: bytes, critical: bool = False) -> bytes:
    return seq(oid(ext_oid), *([tlv(0x01, b"\xff")] if critical else []), tlv(0x04, value))


def san(*general_names: bytes) -> bytes:
    return extension(SUBJECT_ALT_NAME, seq(*general_names))


def dns(name: str) -> bytes:
    return tlv(0x82, name.encode())


def x400_address() -> bytes:
    """GeneralName [3] ORAddress: built-in standard attributes with only a country name."""
    return tlv(0xA3, seq(tlv(0x61, tlv(0x13, b"US"))))


def edi_party_name() -> bytes:
    """GeneralName [5] EDIPartyName: partyName [1] DirectoryString."""
    return tlv(0xA5, tlv(0xA1, tlv(0x0C, b"factory-edi")))


def spki_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def spki_with_curve_oid(key: ec.EllipticCurvePrivateKey, curve_oid: str) -> bytes:
    return seq(seq(oid(EC_PUBLIC_KEY), oid(curve_oid)), tlv(0x03, b"\x00" + _point(key)))


# P-256 (SEC 2 §2.4.2), for a key whose curve is spelled out instead of named.
_P256_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_P256_A = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_P256_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_P256_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def spki_explicit_p256(key: ec.EllipticCurvePrivateKey) -> bytes:
    """id-ecPublicKey with SpecifiedECDomain (RFC 3279) instead of a named curve (RFC 5480 forbids it)."""
    params = seq(
        integer(1),
        seq(oid("1.2.840.10045.1.1"), integer(_P256_P)),  # prime-field
        seq(tlv(0x04, _P256_A.to_bytes(32, "big")), tlv(0x04, _P256_B.to_bytes(32, "big"))),
        tlv(0x04, b"\x04" + _P256_GX.to_bytes(32, "big") + _P256_GY.to_bytes(32, "big")),
        integer(_P256_N),
        integer(1),
    )
    return seq(seq(oid(EC_PUBLIC_KEY), params), tlv(0x03, b"\x00" + _point(key)))


def csr(
    cn: str = "device-hostile",
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    spki: bytes | None = None,
    extensions: tuple[bytes, ...] = (),
    signature_oid: str = ECDSA_SHA256,
) -> bytes:
    """A DER CertificationRequest signed (ECDSA/SHA-256) by ``key``, whatever the other fields say."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = b""
    if extensions:
        attributes = seq(oid(EXTENSION_REQUEST), tlv(0x31, seq(*extensions)))
    info = seq(integer(0), subject(cn), spki if spki is not None else spki_of(key), tlv(0xA0, attributes))
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    return seq(info, seq(oid(signature_oid)), tlv(0x03, b"\x00" + signature))


def _fresh() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _unknown_curve() -> bytes:
    key = _fresh()
    return csr("device-unknown-curve", key=key, spki=spki_with_curve_oid(key, "1.3.6.1.4.1.99999.1"))


def _explicit_curve() -> bytes:
    key = _fresh()
    return csr("device-explicit-curve", key=key, spki=spki_explicit_p256(key))


#: name → (request maker, the EST error code the CA must answer with)
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "unknown-signature-oid": (
        lambda: csr("device-unknown-sig", signature_oid="1.3.6.1.4.1.99999.2"),
        "csr_signature_algorithm",
    ),
    "unknown-curve-oid": (_unknown_curve, "csr_key_type"),
    "explicit-curve-parameters": (_explicit_curve, "csr_key_type"),
    "duplicated-extension": (
        lambda: csr("device-dup-ext", extensions=(san(dns("a.example")), san(dns("b.example")))),
        "csr_malformed",
    ),
    "x400-address-san": (lambda: csr("device-x400", extensions=(san(x400_address()),)), "csr_san_policy"),
    "edi-party-name-san": (lambda: csr("device-edi", extensions=(san(edi_party_name()),)), "csr_san_policy"),
}
