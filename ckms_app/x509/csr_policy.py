"""Checks on a PKCS#10 request before anything is built or signed (A.37, A.40, A.61).

Each failed check raises :class:`CsrRejected` with a sentence the requester can act on. The CA
takes only the subject, the public key and the subjectAltName from a request; every other
requested extension is ignored because the profile, not the requester, decides them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from ckms_app.algorithms import CURVES, Curve
from ckms_app.config import Profile
from ckms_app.errors import CsrRejected

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


def public_key_sha256(key: PublicKeyTypes) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, for any key type cryptography returns."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_csr(der: bytes, profile: Profile, max_bytes: int) -> CheckedCsr:
    if not der:
        raise CsrRejected("empty request body: send a base64-encoded DER PKCS#10 request", code="csr_empty")
    if len(der) > max_bytes:
        raise CsrRejected(f"request is {len(der)} bytes; the limit is {max_bytes}", code="csr_too_large")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise CsrRejected(f"not a DER PKCS#10 request: {exc}", code="csr_malformed") from None

    try:
        key = csr.public_key()
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
    if not isinstance(csr.signature_hash_algorithm, _ACCEPTED_SIGNATURE_HASHES):
        raise CsrRejected(
            "request must be signed with ECDSA and SHA-256/384/512", code="csr_signature_algorithm"
        )
    if not csr.is_signature_valid:
        raise CsrRejected(
            "request signature does not verify: it was not signed by the key it contains",
            code="csr_bad_signature",
        )

    common_name = _check_subject(csr.subject, profile)
    sans = _check_sans(csr, profile)
    return CheckedCsr(
        csr=csr,
        public_key=key,
        subject=csr.subject,
        common_name=common_name,
        sans=sans,
        curve=curve,
        csr_sha256=hashlib.sha256(der).hexdigest(),
        pubkey_sha256=public_key_sha256(key),
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
    except ValueError as exc:
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
