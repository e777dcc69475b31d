"""The hub's CRL acceptance rules (ckms_app.hub.crl_check): what a carrier could try, refused by name."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.errors import CrlRejected
from ckms_app.hub.crl_check import check_crl

NOW = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
CA = (
    x509.CertificateBuilder()
    .subject_name(NAME)
    .issuer_name(NAME)
    .public_key(KEY.public_key())
    .serial_number(1)
    .not_valid_before(NOW - dt.timedelta(days=1))
    .not_valid_after(NOW + dt.timedelta(days=3650))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(KEY, hashes.SHA256())
)


def crl(
    number: int | None = 5, *, this: dt.timedelta = dt.timedelta(0), hours: float = 1, key=KEY, revoked=(7,)
):
    b = x509.CertificateRevocationListBuilder().issuer_name(NAME).last_update(NOW + this)
    b = b.next_update(NOW + this + dt.timedelta(hours=hours))
    if number is not None:
        b = b.add_extension(x509.CRLNumber(number), critical=False)
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_good_crl_gives_its_number_and_revoked_serials() -> None:
    checked = check_crl(crl(), CA, now=NOW, current_number=4)
    assert checked.number == 5 and checked.revoked_serials == {7}
    assert not checked.expired(NOW) and checked.expired(NOW + dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("der", "current", "reason"),
    [
        (crl(key=ec.generate_private_key(ec.SECP256R1())), None, "signature"),
        (crl(3), 4, "older than the held 4"),
        (crl(hours=1, this=dt.timedelta(hours=-2)), None, "expired"),
        (crl(this=dt.timedelta(hours=1)), None, "in the future"),
        (crl(None), None, "no CRL number"),
        (b"\x30\x03\x02\x01\x00", None, "not a DER CRL"),
    ],
)
def test_refusals_name_their_reason(der: bytes, current: int | None, reason: str) -> None:
    with pytest.raises(CrlRejected, match=reason):
        check_crl(der, CA, now=NOW, current_number=current)
