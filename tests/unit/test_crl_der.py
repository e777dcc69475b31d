"""The hand-spliced TBSCertList (ckms_app.x509.crl_der) is byte for byte what pyca/cryptography encodes for
the same CRL, for every reason, UTCTime and GeneralizedTime dates, serials of every length, with and
without entries; and the DER slice of a signed structure's TBS is the structure's own TBS."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.authority.revocation import REASONS
from ckms_app.x509 import crl_der
from ckms_app.x509.assembly import assemble, tbs_der

KEY = ec.generate_private_key(ec.SECP256R1())
NOW = dt.datetime(2026, 11, 30, 7, 0, 0)  # noqa: DTZ001 - the builders take naive UTC
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ckms test CA")])


def _builder(
    revoked: list[x509.RevokedCertificate], delta: bool = False
) -> x509.CertificateRevocationListBuilder:
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(7)),
    ]
    if delta:
        extensions.append(x509.Extension(x509.DeltaCRLIndicator.oid, True, x509.DeltaCRLIndicator(6)))
    return x509.CertificateRevocationListBuilder(
        issuer_name=NAME,
        last_update=NOW,
        next_update=NOW + dt.timedelta(hours=24),
        extensions=extensions,
        revoked_certificates=revoked,
    )


def _cases() -> list[tuple[int, dt.datetime, str]]:
    reasons = list(REASONS)
    serials = [1, 127, 128, 255, 256, 1 << 126, (1 << 127) - 1, secrets.randbits(127) | 1 << 126]
    dates = [NOW, dt.datetime(2049, 12, 31, 23, 59, 59), dt.datetime(2050, 1, 1), dt.datetime(1999, 1, 2)]  # noqa: DTZ001
    return [(s, dates[i % len(dates)], reasons[i % len(reasons)]) for i, s in enumerate(serials * 2)]


@pytest.mark.parametrize("delta", [False, True])
def test_spliced_tbs_equals_cryptographys(delta: bool) -> None:
    revoked, entries = [], []
    for serial, date, reason in _cases():
        code = None if reason == "unspecified" else REASONS[reason]
        extensions = [] if code is None else [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(code))]
        revoked.append(
            x509.RevokedCertificateBuilder(
                serial_number=serial, revocation_date=date, extensions=extensions
            ).build()
        )
        numeric = None if code is None else crl_der.REASON_CODES[code]
        entries.append(crl_der.entry(serial, date.replace(tzinfo=dt.UTC), numeric))
    expected = _builder(revoked, delta).sign(KEY, hashes.SHA256()).tbs_certlist_bytes
    empty_tbs = _builder([], delta).sign(KEY, hashes.SHA256()).tbs_certlist_bytes
    assert crl_der.with_entries(empty_tbs, entries) == expected
    assert crl_der.with_entries(empty_tbs, []) == empty_tbs


def test_signature_algorithm_and_assembly_make_a_valid_crl() -> None:
    empty = _builder([]).sign(KEY, hashes.SHA256())
    tbs = crl_der.with_entries(empty.tbs_certlist_bytes, [crl_der.entry(5, NOW.replace(tzinfo=dt.UTC), 1)])
    algorithm = crl_der.signature_algorithm(tbs)
    crl = x509.load_der_x509_crl(assemble(tbs, algorithm, KEY.sign(tbs, ec.ECDSA(hashes.SHA256()))))
    assert crl.is_signature_valid(KEY.public_key())
    assert [r.serial_number for r in crl] == [5]
    assert tbs_der(crl.public_bytes(serialization.Encoding.DER)) == crl.tbs_certlist_bytes == tbs


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        crl_der.entry(0, NOW, None)
    full = _builder([]).sign(KEY, hashes.SHA256()).tbs_certlist_bytes
    once = crl_der.with_entries(full, [crl_der.entry(3, NOW, None)])
    with pytest.raises(ValueError, match="already has revokedCertificates"):
        crl_der.with_entries(once, [crl_der.entry(4, NOW, None)])
    with pytest.raises(ValueError):
        crl_der.with_entries(b"\x04\x01\x00", [crl_der.entry(4, NOW, None)])
