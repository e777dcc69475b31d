"""The issuance hot path's TBSCertificate from pre-encoded parts is byte for byte cryptography's.

The template (``EndEntityTemplate.tbs``) replaces the builder on the hot path, so every variation a
request can bring (subject attributes and string types, subjectAltNames, the key's curve, the CA's
curve and hash, times with microseconds, UTCTime and GeneralizedTime) must encode identically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ckms_app.config import Profile
from ckms_app.x509.csr_policy import check_csr
from ckms_app.x509.profiles import EndEntityTemplate
from ckms_app.x509.tbs_template import TbsParts

FAR = dt.datetime(2070, 1, 1, tzinfo=dt.UTC)
PROFILE = Profile(
    name="device",
    validity_days=365,
    key_usage=("digital_signature", "key_agreement"),
    extended_key_usage=("client_auth", "server_auth"),
    policy_oid="1.3.6.1.4.1.55555.1.2",
    subject_cn_pattern=r".{1,64}",
    allowed_subject_attributes=("CN", "O", "OU", "serialNumber", "C"),
    san_required=False,
    san_dns_pattern=r"[a-z0-9.-]+",
    san_uri_pattern=r"urn:ckms:device:.+",
    allowed_curves=("P-256", "P-384"),
    secure_until={"P-256": FAR, "P-384": FAR},
)


def ca(curve: ec.EllipticCurve, hash_: hashes.HashAlgorithm) -> x509.Certificate:
    key = ec.generate_private_key(curve)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "ckms template CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Factory 工場"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(dt.datetime(2020, 1, 1))
        .not_valid_after(dt.datetime(2069, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hash_)
    )


CAS = {
    "P-256": (ca(ec.SECP256R1(), hashes.SHA256()), hashes.SHA256()),
    "P-384": (ca(ec.SECP384R1(), hashes.SHA384()), hashes.SHA384()),
}
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    ca_curve=st.sampled_from(sorted(CAS)),
    key_curve=st.sampled_from([ec.SECP256R1(), ec.SECP384R1()]),
    cn=NAMES,
    organisation=st.none() | NAMES,
    country=st.none() | st.sampled_from(["JP", "DE"]),
    dns=st.lists(st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True), max_size=3),
    uri=st.booleans(),
    eku=st.booleans(),
    now=st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2067, 12, 31)),
    serial=st.integers(min_value=1, max_value=2**159 - 1),
)
def test_template_tbs_is_the_builders_tbs(
    ca_curve: str,
    key_curve: ec.EllipticCurve,
    cn: str,
    organisation: str | None,
    country: str | None,
    dns: list[str],
    uri: bool,
    eku: bool,
    now: dt.datetime,
    serial: int,
) -> None:
    issuer, hash_ = CAS[ca_curve]
    profile = PROFILE if eku else dataclasses.replace(PROFILE, extended_key_usage=())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    if country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    if uri:
        sans.append(x509.UniformResourceIdentifier("urn:ckms:device:d-1"))
    key = ec.generate_private_key(key_curve)
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if sans:
        request = request.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    checked = check_csr(
        request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER), profile, 4096
    )
    template = EndEntityTemplate(
        profile=profile,
        issuer=issuer,
        crl_url="http://ca/crl/full.crl",
        delta_crl_url="http://ca/crl/delta.crl",
    )
    moment = now.replace(tzinfo=dt.UTC)
    fields = {
        "subject": checked.subject,
        "sans": checked.sans,
        "public_key": checked.public_key,
        "serial": serial,
        "now": moment,
    }
    expected = template.builder(**fields).sign(ec.generate_private_key(issuer.public_key().curve), hash_)
    assert template.tbs(**fields, signature_hash=hash_) == expected.tbs_certificate_bytes
    assert template.tbs(**fields, signature_hash=hash_, spki=checked.spki) == expected.tbs_certificate_bytes


def test_validity_refusals_are_the_builders() -> None:
    """A certificate that would outlive its CA is refused by both, with the same error."""
    issuer, hash_ = CAS["P-256"]
    template = EndEntityTemplate(
        profile=PROFILE, issuer=issuer, crl_url="http://c/f", delta_crl_url="http://c/d"
    )
    key = ec.generate_private_key(ec.SECP256R1())
    fields = {
        "subject": x509.Name([]),
        "sans": (),
        "public_key": key.public_key(),
        "serial": 7,
        "now": dt.datetime(2068, 6, 1, tzinfo=dt.UTC),
    }
    with pytest.raises(Exception, match="beyond") as from_builder:
        template.builder(**fields)
    with pytest.raises(type(from_builder.value), match="beyond"):
        template.tbs(**fields, signature_hash=hash_)


def test_a_sample_without_a_subject_key_identifier_is_refused() -> None:
    issuer, hash_ = CAS["P-256"]
    with pytest.raises(ValueError, match="subjectKeyIdentifier"):
        TbsParts.of(issuer.tbs_certificate_bytes, 0)


def test_template_serves_a_curve_whose_limit_the_sample_curve_would_pass() -> None:
    """The parts come from a P-256 sample; a profile whose validity passes P-256's end of life must still
    give P-384 keys their certificate (and refuse P-256 ones), as the builder does."""
    issuer, hash_ = CAS["P-384"]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    profile = dataclasses.replace(PROFILE, validity_days=800, secure_until={"P-256": soon, "P-384": FAR})
    template = EndEntityTemplate(
        profile=profile, issuer=issuer, crl_url="http://c/f", delta_crl_url="http://c/d"
    )
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    fields = {"subject": x509.Name([]), "sans": (), "public_key": key.public_key(), "serial": 9, "now": now}
    expected = template.builder(**fields).sign(ec.generate_private_key(ec.SECP384R1()), hash_)
    assert template.tbs(**fields, signature_hash=hash_) == expected.tbs_certificate_bytes
    weak = {**fields, "public_key": ec.generate_private_key(ec.SECP256R1()).public_key()}
    with pytest.raises(Exception, match="validity|beyond"):
        template.tbs(**weak, signature_hash=hash_)
