"""Checks on a PKCS#10 request before anything is built or signed (A.37, A.40, A.61).

Each failed check raises :class:`CsrRejected` with a sentence the requester can act on, and nothing
else: a request is attacker-controlled DER, and whatever pyca/cryptography cannot or will not read
(unknown signature or curve OIDs, duplicated extensions, x400Address or ediPartyName names) is an
answer for the requester, not a fault of the CA. The CA takes only the subject, the public key and the
subjectAltName from a request; every other requested extension is ignored because the profile, not
the requester, decides them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from ckms_app.algorithms import CURVES, Curve
from ckms_app.config import Profile
from ckms_app.errors import CsrRejected
from ckms_app.x509.der import children, read_tlv

_ATTRIBUTE_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
}
_ACCEPTED_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_ACCEPTED_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_OID_TAG, _SEQUENCE_TAG = 0x06, 0x30
_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1, the content of its OID element
# What else the parser may raise on hostile DER; each means "malformed request", never a fault.
_UNREADABLE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)


@dataclass(frozen=True)
class CheckedCsr:
    """A request that passed every check, with what the builder needs."""

    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey  # the request's key, already checked to be EC on an allowed curve
    subject: x509.Name
    common_name: str
    sans: tuple[x509.GeneralName, ...]
    curve: Curve
    csr_sha256: str
    pubkey_sha256: str
    spki: bytes  # the key's DER SubjectPublicKeyInfo, encoded once for the hash and the certificate


def public_key_sha256(key: PublicKeyTypes) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, for any key type cryptography returns."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_csr(der: bytes, profile: Profile, max_bytes: int) -> CheckedCsr:
    """The request, checked against ``profile``; :class:`CsrRejected` is the only exception it raises."""
    if not der:
        raise CsrRejected("empty request body: send a base64-encoded DER PKCS#10 request", code="csr_empty")
    if len(der) > max_bytes:
        raise CsrRejected(f"request is {len(der)} bytes; the limit is {max_bytes}", code="csr_too_large")
    try:
        return _check(der, profile)
    except CsrRejected:
        raise
    except _UNREADABLE as exc:  # a check below missed a parser failure: still the request's fault
        raise CsrRejected(f"not a readable PKCS#10 request: {exc}", code="csr_malformed") from None


def request_subject(der: bytes) -> str:
    """The request's subject (RFC 4514), for finding what a re-enrolment renews; :class:`CsrRejected`
    if the request cannot be read (the full checks come after the lookup)."""
    try:
        return x509.load_der_x509_csr(der).subject.rfc4514_string()
    except _UNREADABLE as exc:
        raise CsrRejected(f"not a DER PKCS#10 request: {exc}", code="csr_malformed") from None


def _check(der: bytes, profile: Profile) -> CheckedCsr:
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrRejected(f"not a DER PKCS#10 request: {exc}", code="csr_malformed") from None

    _require_named_curve(csr.tbs_certrequest_bytes)
    try:
        key = csr.public_key()
    except UnsupportedAlgorithm as exc:
        raise CsrRejected(
            f"unsupported key algorithm or curve ({exc}); profile {profile.name!r} accepts EC "
            f"{', '.join(profile.allowed_curves)}",
            code="csr_key_type",
        ) from None
    except (ValueError, TypeError) as exc:
        raise CsrRejected(f"unreadable public key: {exc}", code="csr_bad_key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CsrRejected(
            f"key type {type(key).__name__.removesuffix('PublicKey').lstrip('_')} is not allowed; "
            f"profile {profile.name!r} accepts EC {', '.join(profile.allowed_curves)}",
            code="csr_key_type",
        )
    curve = next((c for c in CURVES.values() if c.crypto_curve.name == key.curve.name), None)
    if curve is None or curve.name not in profile.allowed_curves:
        raise CsrRejected(
            f"EC curve {key.curve.name} is not allowed; profile {profile.name!r} accepts "
            f"{', '.join(profile.allowed_curves)}",
            code="csr_key_type",
        )
    if csr.signature_algorithm_oid not in _ACCEPTED_SIGNATURES or not isinstance(
        csr.signature_hash_algorithm, _ACCEPTED_SIGNATURE_HASHES
    ):
        raise CsrRejected(
            f"signature algorithm {csr.signature_algorithm_oid.dotted_string} is not accepted: "
            "the request must be signed with ECDSA and SHA-256/384/512",
            code="csr_signature_algorithm",
        )
    if not csr.is_signature_valid:
        raise CsrRejected(
            "request signature does not verify: it was not signed by the key it contains",
            code="csr_bad_signature",
        )

    common_name = _check_subject(csr.subject, profile)
    sans = _check_sans(csr, profile)
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return CheckedCsr(
        csr=csr,
        public_key=key,
        subject=csr.subject,
        common_name=common_name,
        sans=sans,
        curve=curve,
        csr_sha256=hashlib.sha256(der).hexdigest(),
        pubkey_sha256=hashlib.sha256(spki).hexdigest(),  # = public_key_sha256(key)
        spki=spki,
    )


def _require_named_curve(tbs: bytes) -> None:
    """RFC 5480 §2.1.1: an EC key names its curve by OID. Explicit parameters (SpecifiedECDomain) are
    refused even when they spell out an allowed curve: the CA does not compare curve arithmetic."""
    try:
        _, info, _ = read_tlv(tbs)
        spki = children(info)[2]  # version, subject, subjectPKInfo, attributes
        algorithm = children(children(spki[1])[0][1]) if spki[0] == _SEQUENCE_TAG else []
    except (ValueError, IndexError):
        raise CsrRejected(
            "not a DER PKCS#10 request: unreadable subjectPKInfo", code="csr_malformed"
        ) from None
    if len(algorithm) == 2 and algorithm[0] == (_OID_TAG, _EC_PUBLIC_KEY) and algorithm[1][0] != _OID_TAG:
        raise CsrRejected(
            "EC key with explicit curve parameters: name the curve (RFC 5480), P-256 or P-384",
            code="csr_key_type",
        )


def _check_subject(subject: x509.Name, profile: Profile) -> str:
    cns: list[str] = []
    for rdn in subject.rdns:
        for attr in rdn:
            short = _ATTRIBUTE_NAMES.get(attr.oid)
            if short is None or short not in profile.allowed_subject_attributes:
                raise CsrRejected(
                    f"subject attribute {short or attr.oid.dotted_string} is not allowed; "
                    f"allowed: {', '.join(profile.allowed_subject_attributes)}",
                    code="csr_subject_policy",
                )
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
            if not value or len(value) > 64:
                raise CsrRejected(f"subject {short} must be 1 to 64 characters", code="csr_subject_policy")
            if short == "CN":
                cns.append(value)
    if len(cns) != 1:
        raise CsrRejected(f"subject must have exactly one CN (has {len(cns)})", code="csr_subject_policy")
    if not re.fullmatch(profile.subject_cn_pattern, cns[0]):
        raise CsrRejected(
            f"subject CN {cns[0]!r} is not a valid device ID (pattern {profile.subject_cn_pattern})",
            code="csr_subject_policy",
        )
    return cns[0]


def _check_sans(csr: x509.CertificateSigningRequest, profile: Profile) -> tuple[x509.GeneralName, ...]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        if profile.san_required:
            raise CsrRejected("profile requires a subjectAltName", code="csr_san_policy") from None
        return ()
    except x509.DuplicateExtension as exc:
        raise CsrRejected(
            f"extension {exc.oid.dotted_string} is requested twice (RFC 5280 §4.2 allows one)",
            code="csr_malformed",
        ) from None
    except x509.UnsupportedGeneralNameType:
        raise CsrRejected(
            f"subjectAltName x400Address or ediPartyName is not allowed by profile {profile.name!r}: "
            "only DNS names and URIs are issued",
            code="csr_san_policy",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(f"unreadable extension request: {exc}", code="csr_malformed") from None
    names = tuple(ext.value)
    for name in names:
        if isinstance(name, x509.DNSName) and profile.san_dns_pattern:
            if re.fullmatch(profile.san_dns_pattern, name.value):
                continue
        elif isinstance(name, x509.UniformResourceIdentifier) and profile.san_uri_pattern:
            if re.fullmatch(profile.san_uri_pattern, name.value):
                continue
        raise CsrRejected(
            f"subjectAltName {type(name).__name__}:{getattr(name, 'value', name)} is not allowed by profile "
            f"{profile.name!r}",
            code="csr_san_policy",
        )
    return names
