"""The hub's CRL acceptance rules (ckms_app.hub.crl_check): what a carrier could try, refused by name."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.errors import CrlRejected
from ckms_app.hub.crl_check import ca_key_id, check_crl

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


# ------------------------------------------------------------------ several CAs (after a key rollover)
# Two CA certificates with the same subject DN and different keys: the old and the new generation. The
# issuer of a CRL must be chosen by its AKI against each CA's SKI, never by the (shared) name.
def _ca(key: ec.EllipticCurvePrivateKey, serial: int) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


KEY1, KEY2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
CA1, CA2 = _ca(KEY1, 11), _ca(KEY2, 12)
SKI1, SKI2 = (ca_key_id(c) for c in (CA1, CA2))


def aki_crl(
    number: int, *, key: ec.EllipticCurvePrivateKey, aki_of: ec.EllipticCurvePrivateKey | None
) -> bytes:
    """A CRL signed by ``key`` whose AKI names ``aki_of``'s key (None: no AKI)."""
    b = x509.CertificateRevocationListBuilder().issuer_name(NAME).last_update(NOW)
    b = b.next_update(NOW + dt.timedelta(hours=1)).add_extension(x509.CRLNumber(number), critical=False)
    if aki_of is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_of.public_key()), critical=False
        )
    b = b.add_revoked_certificate(
        x509.RevokedCertificateBuilder().serial_number(number * 100).revocation_date(NOW).build()
    )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_same_name_cas_each_crl_is_attributed_to_its_own_key() -> None:
    assert CA1.subject == CA2.subject and SKI1 != SKI2
    first = check_crl(aki_crl(5, key=KEY1, aki_of=KEY1), [CA1, CA2], now=NOW)
    second = check_crl(aki_crl(9, key=KEY2, aki_of=KEY2), [CA1, CA2], now=NOW)
    assert (first.issuer_key_id, first.number, first.revoked_serials) == (SKI1, 5, {500})
    assert (second.issuer_key_id, second.number, second.revoked_serials) == (SKI2, 9, {900})
    # the order of the trusted CAs does not matter: the key decides, not the first name that fits
    assert check_crl(aki_crl(5, key=KEY1, aki_of=KEY1), [CA2, CA1], now=NOW).issuer_key_id == SKI1


def test_a_crl_signed_by_ca2_carrying_ca1s_aki_is_refused() -> None:
    with pytest.raises(CrlRejected, match=f"signature does not verify under the key of CA {SKI1}"):
        check_crl(aki_crl(5, key=KEY2, aki_of=KEY1), [CA1, CA2], now=NOW)


def test_a_crl_whose_aki_names_no_trusted_ca_is_refused() -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CrlRejected, match="is not one of the trusted CAs"):
        check_crl(aki_crl(5, key=stranger, aki_of=stranger), [CA1, CA2], now=NOW)
    # with only CA1 trusted, CA2's own (genuine) CRL is a stranger too
    with pytest.raises(CrlRejected, match="is not one of the trusted CAs"):
        check_crl(aki_crl(5, key=KEY2, aki_of=KEY2), [CA1], now=NOW)


def test_without_an_aki_a_name_shared_by_two_cas_is_refused() -> None:
    with pytest.raises(CrlRejected, match="no authorityKeyIdentifier, and 2 trusted CAs"):
        check_crl(aki_crl(5, key=KEY1, aki_of=None), [CA1, CA2], now=NOW)
    # with one CA of that name, the signature decides as before
    assert check_crl(aki_crl(5, key=KEY1, aki_of=None), [CA1], now=NOW).issuer_key_id == SKI1


@pytest.mark.parametrize("other", [1, 50])
def test_replay_protection_is_per_issuer(other: int) -> None:
    """Issuer 1 holds 10; whatever issuer 2 holds (lower or higher), an older CRL of issuer 1 is refused
    and issuer 2's CRLs are judged against issuer 2's number only."""
    held = {SKI1: 10, SKI2: other}
    with pytest.raises(CrlRejected, match=f"older than the held 10 of CA {SKI1}"):
        check_crl(aki_crl(9, key=KEY1, aki_of=KEY1), [CA1, CA2], now=NOW, current_numbers=held)
    assert (
        check_crl(aki_crl(10, key=KEY1, aki_of=KEY1), [CA1, CA2], now=NOW, current_numbers=held).number == 10
    )
    if other == 1:  # issuer 2 is not held back by issuer 1's higher number
        assert (
            check_crl(aki_crl(2, key=KEY2, aki_of=KEY2), [CA1, CA2], now=NOW, current_numbers=held).number
            == 2
        )
    else:
        with pytest.raises(CrlRejected, match=f"older than the held 50 of CA {SKI2}"):
            check_crl(aki_crl(20, key=KEY2, aki_of=KEY2), [CA1, CA2], now=NOW, current_numbers=held)
    # an issuer without a held number has no floor
    assert (
        check_crl(aki_crl(1, key=KEY2, aki_of=KEY2), [CA1, CA2], now=NOW, current_numbers={SKI1: 10}).number
        == 1
    )


def test_a_ca_without_ski_extension_is_keyed_by_its_key_hash() -> None:
    assert ca_key_id(CA) == x509.SubjectKeyIdentifier.from_public_key(KEY.public_key()).digest.hex()
