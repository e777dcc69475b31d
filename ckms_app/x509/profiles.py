"""Turn a profile plus a checked subject and key into an RFC 5280 v3 certificate builder.

The builder is signed once with a throwaway key for the linter; the HSM then signs the very
TBSCertificate bytes the linter saw (see ``certificate_assembly``). Other callers (the ceremony,
identity certificates) simply sign the builder with the CA key.

Crypto-periods (A.59, A.62, A.65, A.69): a certificate is valid for exactly its profile's
``validity_days``, or it is not issued. A certificate that would outlive its issuer, or the end of
life of its key's curve or of the CA's signature (``[algorithms] secure_until``), is refused with a
:class:`~ckms_app.errors.CsrRejected` naming the limit, never silently cut short: a device that
gets a shorter life than its profile promises fails in the field on a date nobody planned for.
EST carries no validity in the request, so the profile's validity *is* the requested validity.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from ckms_app.algorithms import CURVES, curve_of
from ckms_app.config import DEFAULT_SECURE_UNTIL, Profile
from ckms_app.errors import ConfigError, CsrRejected
from ckms_app.x509.key_ids import subject_key_id
from ckms_app.x509.tbs_template import TbsParts

_DER, _SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
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


@dataclass(frozen=True)
class ValidityLimit:
    """The latest notAfter a certificate of one issuer may have for a key on one curve, and why."""

    not_after: dt.datetime
    code: str  # validity_beyond_ca | validity_beyond_algorithm
    reason: str  # for people: which limit, and its date

    def refusal(self, profile: str, validity_days: int, not_after: dt.datetime) -> CsrRejected:
        return CsrRejected(
            f"profile {profile!r} gives {validity_days} days of validity, until {not_after:%Y-%m-%d}, "
            f"beyond {self.reason}: refused, not shortened (A.62). Use a profile with a shorter "
            "validity, or renew the CA (key rollover) first",
            code=self.code,
        )


def validity_limits(
    issuer: x509.Certificate, secure_until: dict[str, dt.datetime] | None = None
) -> dict[str, ValidityLimit]:
    """Per curve of the subject's key: the earliest of the issuer's notAfter, the end of life of the
    issuer's curve (its signature is on every certificate) and that of the subject key's curve."""
    ends = secure_until or DEFAULT_SECURE_UNTIL
    issuer_not_after = issuer.not_valid_after_utc
    issuer_key = issuer.public_key()
    if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
        raise ConfigError("the CA certificate's key is not an EC key on an allowed curve (A.62)")
    issuer_curve = curve_of(issuer_key).name
    limits = {}
    for name in CURVES:
        candidates = [
            ValidityLimit(
                issuer_not_after,
                "validity_beyond_ca",
                f"the CA certificate's expiry ({issuer_not_after:%Y-%m-%d %H:%M} UTC)",
            ),
            ValidityLimit(
                ends[issuer_curve],
                "validity_beyond_algorithm",
                f"the end of life of the CA's {issuer_curve} signature ({ends[issuer_curve]:%Y-%m-%d})",
            ),
            ValidityLimit(
                ends[name],
                "validity_beyond_algorithm",
                f"the end of life of the key's curve {name} ({ends[name]:%Y-%m-%d})",
            ),
        ]
        limits[name] = min(candidates, key=lambda limit: limit.not_after)
    return limits


def validity_problems(profiles: list[Profile], issuer: x509.Certificate, now: dt.datetime) -> list[str]:
    """Why a profile cannot issue today, or until when it still can (``ca init``, ``ckms expiry check``,
    daemon start): a profile whose validity no longer fits makes every request under it fail."""
    problems = []
    for profile in profiles:
        limits = validity_limits(issuer, profile.secure_until)
        validity = dt.timedelta(days=profile.validity_days)
        for curve in profile.allowed_curves:
            limit = limits[curve]
            last_day = limit.not_after - validity  # the last moment a request can still be honoured
            if last_day <= now:
                problems.append(
                    f"profile {profile.name!r} ({curve} keys): {profile.validity_days} days of validity "
                    f"do not fit before {limit.reason}: every such request is REFUSED. Shorten "
                    f"[profiles.{profile.name}] validity_days or renew the CA"
                )
            elif last_day - now < dt.timedelta(days=90):
                problems.append(
                    f"profile {profile.name!r} ({curve} keys): requests are refused from "
                    f"{last_day:%Y-%m-%d}, when {profile.validity_days} days no longer fit before "
                    f"{limit.reason}"
                )
    return problems


def ca_outlives_algorithm(issuer: x509.Certificate, secure_until: dict[str, dt.datetime]) -> str | None:
    """A warning when the CA certificate is valid past its own curve's end of life (an imported
    certificate can be; ``ca init`` refuses to self-sign one): it must be replaced before that date."""
    issuer_key = issuer.public_key()
    if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
        raise ConfigError("the CA certificate's key is not an EC key on an allowed curve (A.62)")
    curve = curve_of(issuer_key).name
    if issuer.not_valid_after_utc <= secure_until[curve]:
        return None
    return (
        f"the CA certificate is valid until {issuer.not_valid_after_utc:%Y-%m-%d}, past the end of life of "
        f"its {curve} key ({secure_until[curve]:%Y-%m-%d}, A.62): nothing it signs may be valid past that "
        "date; plan the CA key rollover to a stronger curve before it"
    )


class EndEntityTemplate:
    """Everything an end-entity certificate of one profile and issuer shares, built once: the constant
    extensions (basicConstraints, keyUsage, AKI, policies, CRL distribution points, EKU); per certificate
    only the subject, key, serial, validity, SKI and SAN change (:meth:`builder`, or :meth:`tbs` as DER)."""

    def __init__(
        self, *, profile: Profile, issuer: x509.Certificate, crl_url: str, delta_crl_url: str
    ) -> None:
        self._profile, self._validity_days = profile.name, profile.validity_days
        self._backdate = dt.timedelta(seconds=profile.backdate_seconds)
        self._validity = dt.timedelta(days=profile.validity_days)
        # per curve of the subject key: the latest notAfter allowed (issuer, algorithms), computed once
        self._limits = validity_limits(issuer, profile.secure_until)
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
        self._parts: dict[str, TbsParts] = {}  # per signature hash, for tbs()

    def validity(self, now: dt.datetime, curve: str) -> tuple[dt.datetime, dt.datetime]:
        """notBefore (backdated for clock skew) and notAfter, the profile's full validity; refused
        (CsrRejected) when that passes the issuer's notAfter or the end of life of either curve."""
        not_after = now + self._validity
        limit = self._limits[curve]
        if not_after > limit.not_after:
            raise limit.refusal(self._profile, self._validity_days, not_after)
        return now - self._backdate, not_after

    def builder(
        self,
        *,
        subject: x509.Name,
        sans: tuple[x509.GeneralName, ...],
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        now: dt.datetime,
    ) -> x509.CertificateBuilder:
        not_before, not_after = self.validity(now, curve_of(public_key).name)
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

    def tbs(
        self,
        *,
        subject: x509.Name,
        sans: tuple[x509.GeneralName, ...],
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        now: dt.datetime,
        signature_hash: hashes.SHA256 | hashes.SHA384,
        spki: bytes | None = None,
    ) -> bytes:
        """The DER TBSCertificate :meth:`builder` gives signed with ``signature_hash``, byte for byte, from
        pre-encoded parts (:mod:`ckms_app.x509.tbs_template`): the issuance hot path's builder."""
        parts = self._parts.get(signature_hash.name)
        if parts is None:
            parts = self._parts[signature_hash.name] = TbsParts.of_builder(self.builder, signature_hash)
        not_before, not_after = self.validity(now, curve_of(public_key).name)
        return parts.tbs(
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            subject=subject.public_bytes(),
            spki=spki or public_key.public_bytes(_DER, _SPKI),  # ``spki``: the caller's encoding of the key
            san=x509.SubjectAlternativeName(list(sans)) if sans else None,
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
    secure_until: dict[str, dt.datetime] | None = None,
) -> x509.CertificateBuilder:
    """A self-signed root for the private CA: keyCertSign + cRLSign, no path length below it.

    Refused when it would outlive its curve's security lifetime (A.62, ``[algorithms] secure_until``):
    every certificate it signs would then carry a signature of that strength past the date."""
    curve = curve_of(public_key)
    end_of_life = (secure_until or DEFAULT_SECURE_UNTIL)[curve.name]
    not_after = now + dt.timedelta(days=validity_days)
    if not_after > end_of_life:
        raise ConfigError(
            f"a {curve.name} CA certificate valid for {validity_days} days would be valid until "
            f"{not_after:%Y-%m-%d}, beyond the curve's security lifetime (until "
            f"{end_of_life:%Y-%m-%d}, CRYPTREC): shorten the validity or use P-384"
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


def link_builder(
    *,
    subject: x509.Certificate,
    issuer: x509.Certificate,
    now: dt.datetime,
    policy_oid: str,
) -> x509.CertificateBuilder:
    """A link certificate for a CA key rollover (RFC 4210 §4.4): the key of ``subject`` (one generation's
    CA certificate) certified by the key of ``issuer`` (the other generation's), to be signed by that key.
    NewWithOld lets a relying party that trusts only the old CA certificate accept the new key's
    certificates; OldWithNew lets one that already trusts only the new certificate accept the old key's.

    Both generations keep the CA's name, so a link is self-issued and the CA's pathLen 0 still holds
    (RFC 5280 §4.2.1.9 does not count self-issued certificates); the key identifiers tell the keys apart.
    The link ends with the earlier of the two certificates, so no path through it outlives either."""
    if subject.subject != issuer.subject:
        raise ConfigError(
            "a link certificate joins two keys of one CA: the certificates name "
            f"{subject.subject.rfc4514_string()!r} and {issuer.subject.rfc4514_string()!r}"
        )
    subject_key, issuer_key = subject_key_id(subject), subject_key_id(issuer)
    if subject_key == issuer_key:
        raise ConfigError("a link certificate joins two different keys: both certificates hold the same one")
    public_key = subject.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ConfigError("a ckms CA key is an EC key")
    return (
        x509.CertificateBuilder()
        .subject_name(subject.subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(subject.not_valid_after_utc, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(("key_cert_sign", "crl_sign", "digital_signature")), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(bytes.fromhex(subject_key)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(bytes.fromhex(issuer_key), None, None),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(policy_oid), None)]),
            critical=False,
        )
    )
