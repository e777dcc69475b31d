"""Turn a profile plus a checked subject and key into an RFC 5280 v3 certificate builder.

The builder is signed twice: first with a throwaway key for the linter, then by the HSM. Both
signatures cover the same TBSCertificate because the builder is immutable.
"""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from .config import Profile
from .errors import ConfigError

_EKU = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def new_serial() -> int:
    """A positive random serial of 127 bits (RFC 5280: at most 20 octets; CA/B asks ≥ 64 bits)."""
    return secrets.randbits(127) | (1 << 126)


def key_usage(names: tuple[str, ...]) -> x509.KeyUsage:
    unknown = set(names) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ConfigError(f"unknown key_usage {sorted(unknown)}; known: {', '.join(_KEY_USAGE_FLAGS)}")
    flags = {name: name in names for name in _KEY_USAGE_FLAGS}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def extended_key_usage(names: tuple[str, ...]) -> x509.ExtendedKeyUsage:
    try:
        return x509.ExtendedKeyUsage([_EKU[n] for n in names])
    except KeyError as exc:
        raise ConfigError(f"unknown extended_key_usage {exc.args[0]!r}; known: {', '.join(_EKU)}") from None


def end_entity_builder(
    *,
    profile: Profile,
    subject: x509.Name,
    sans: tuple[x509.GeneralName, ...],
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    serial: int,
    now: dt.datetime,
    crl_url: str,
    delta_crl_url: str,
) -> x509.CertificateBuilder:
    not_before = now - dt.timedelta(seconds=profile.backdate_seconds)
    not_after = min(now + dt.timedelta(days=profile.validity_days), issuer.not_valid_after_utc)
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(profile.key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(profile.policy_oid), None)]),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(
            x509.FreshestCRL([x509.DistributionPoint([x509.UniformResourceIdentifier(delta_crl_url)], None, None, None)]),
            critical=False,
        )
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(extended_key_usage(profile.extended_key_usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder


def ca_builder(
    *, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime, validity_days: int, policy_oid: str
) -> x509.CertificateBuilder:
    """A self-signed root for the private CA: keyCertSign + cRLSign, no path length below it."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(("key_cert_sign", "crl_sign", "digital_signature")), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(policy_oid), None)]),
            critical=False,
        )
    )
