"""No certificate outlives its curve's security lifetime (A.62): P-256 through 2040, P-384 through 2070.

A CA certificate that would is refused when it is made; so is an end-entity certificate (issue 14 part 4:
refused with a clear error, never silently cut at the date).
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.algorithms import CURVES
from ckms_app.config import Profile
from ckms_app.errors import ConfigError, CsrRejected
from ckms_app.x509.profiles import EndEntityTemplate, ca_builder

POLICY = "1.3.6.1.4.1.55555.1.1"
SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])


def _ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    builder = ca_builder(
        subject=SUBJECT, public_key=key.public_key(), now=now, validity_days=days, policy_oid=POLICY
    )
    return builder.sign(key, hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256())


def test_p256_ca_certificate_beyond_2040_is_refused_naming_the_date() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime(2032, 6, 1, tzinfo=dt.UTC)
    with pytest.raises(
        ConfigError,
        match=r"P-256 CA certificate valid for 3650 days would be valid until 2042-05-30.*2040-12-31",
    ):
        _ca(key, now, 3650)
    assert _ca(key, now, 3000).not_valid_after_utc < CURVES["P-256"].secure_until


def test_p384_ca_certificate_of_the_same_length_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _ca(key, dt.datetime(2032, 6, 1, tzinfo=dt.UTC), 3650)
    assert cert.not_valid_after_utc.year == 2042


def test_end_entity_certificate_past_its_key_curves_lifetime_is_refused_not_cut() -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime(2040, 6, 1, tzinfo=dt.UTC)
    ca = _ca(ca_key, now - dt.timedelta(days=1), 3650)
    profile = Profile(
        name="device",
        validity_days=365,
        key_usage=("digital_signature",),
        extended_key_usage=(),
        policy_oid=POLICY,
        subject_cn_pattern=".*",
        allowed_subject_attributes=(),
        san_required=False,
        san_dns_pattern=None,
        san_uri_pattern=None,
        allowed_curves=("P-256", "P-384"),
    )
    template = EndEntityTemplate(
        profile=profile, issuer=ca, crl_url="http://x/crl", delta_crl_url="http://x/d"
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")])
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(
        CsrRejected,
        match=r"until 2041-06-01, beyond the end of life of the key's curve P-256 "
        r"\(2040-12-31\)",
    ) as refused:
        template.builder(subject=subject, sans=(), public_key=p256, serial=1, now=now)
    assert refused.value.code == "validity_beyond_algorithm" and refused.value.http_status == 400
    leaf384 = template.builder(subject=subject, sans=(), public_key=p384, serial=2, now=now).sign(
        ca_key, hashes.SHA384()
    )
    assert leaf384.not_valid_after_utc == now + dt.timedelta(days=365)
