"""Turn a profile plus a checked subject and key into an RFC 5280 v3 certificate builder.

The builder is signed once with a throwaway key for the linter; the HSM then signs the very
TBSCertificate bytes the linter saw (see ``certificate_assembly``). Other callers (the ceremony,
identity certificates) simply sign the builder with the CA key.
"""

from __future__ import annotations

import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from ckms_app.algorithms import curve_of
from ckms_app.config import Profile
from ckms_app.errors import ConfigError

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


class EndEntityTemplate:
    """Everything an end-entity certificate of one profile and issuer shares, built once.

    The constant extensions (basicConstraints, keyUsage, AKI, policies, CRL distribution points,
    EKU) are the same objects for every certificate; per certificate only the subject, key, serial,
    validity, SKI and SAN change. Building the builder directly from the finished extension list
    saves the per-extension copying and checks of ``add_extension`` on the issuance hot path.
    """

    def __init__(
        self, *, profile: Profile, issuer: x509.Certificate, crl_url: str, delta_crl_url: str
    ) -> None:
        self._backdate = dt.timedelta(seconds=profile.backdate_seconds)
        self._validity = dt.timedelta(days=profile.validity_days)
        self._issuer_not_after = issuer.not_valid_after_utc
        self._issuer_name = issuer.subject
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        ext = x509.Extension
        self._head = [
            ext(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)),
            ext(ExtensionOID.KEY_USAGE, True, key_usage(profile.key_usage)),
        ]
        self._tail: list[x509.Extension[x509.ExtensionType]] = [
            ext(
                ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            ),
            ext(
                ExtensionOID.CERTIFICATE_POLICIES,
                False,
                x509.CertificatePolicies(
                    [x509.PolicyInformation(x509.ObjectIdentifier(profile.policy_oid), None)]
                ),
            ),
            ext(
                ExtensionOID.CRL_DISTRIBUTION_POINTS,
                False,
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
                ),
            ),
            ext(
                ExtensionOID.FRESHEST_CRL,
                False,
                x509.FreshestCRL(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(delta_crl_url)], None, None, None
                        )
                    ]
                ),
            ),
        ]
        if profile.extended_key_usage:
            self._tail.append(
                ext(ExtensionOID.EXTENDED_KEY_USAGE, False, extended_key_usage(profile.extended_key_usage))
            )

    def validity(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """notBefore (backdated for clock skew) and notAfter (never beyond the issuer's)."""
        return now - self._backdate, min(now + self._validity, self._issuer_not_after)

    def builder(
        self,
        *,
        subject: x509.Name,
        sans: tuple[x509.GeneralName, ...],
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        now: dt.datetime,
    ) -> x509.CertificateBuilder:
        not_before, not_after = self.validity(now)
        # never beyond the security lifetime of the device key's curve (A.62)
        not_after = min(not_after, curve_of(public_key).secure_until)
        extensions = [
            *self._head,
            x509.Extension(
                ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                False,
                x509.SubjectKeyIdentifier.from_public_key(public_key),
            ),
            *self._tail,
        ]
        if sans:
            extensions.append(
                x509.Extension(
                    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, x509.SubjectAlternativeName(list(sans))
                )
            )
        return x509.CertificateBuilder(
            issuer_name=self._issuer_name,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=_naive_utc(not_before),
            not_valid_after=_naive_utc(not_after),
            extensions=extensions,
        )


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    # What CertificateBuilder.not_valid_before/after store; the constructor takes them as they are.
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


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
    """One end-entity builder; callers issuing many keep an :class:`EndEntityTemplate` instead."""
    template = EndEntityTemplate(profile=profile, issuer=issuer, crl_url=crl_url, delta_crl_url=delta_crl_url)
    return template.builder(subject=subject, sans=sans, public_key=public_key, serial=serial, now=now)


def ca_builder(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    validity_days: int,
    policy_oid: str,
) -> x509.CertificateBuilder:
    """A self-signed root for the private CA: keyCertSign + cRLSign, no path length below it.

    Refused when it would outlive its curve's security lifetime (A.62): every certificate it signs
    would then carry a signature of that strength past the date."""
    curve = curve_of(public_key)
    not_after = now + dt.timedelta(days=validity_days)
    if not_after > curve.secure_until:
        raise ConfigError(
            f"a {curve.name} CA certificate valid for {validity_days} days would be valid until "
            f"{not_after:%Y-%m-%d}, beyond the curve's security lifetime (until "
            f"{curve.secure_until:%Y-%m-%d}, CRYPTREC): shorten the validity or use P-384"
        )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(("key_cert_sign", "crl_sign", "digital_signature")), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(policy_oid), None)]),
            critical=False,
        )
    )
