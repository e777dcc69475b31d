"""The revokedCertificates of a large CRL, encoded once per entry and spliced into a TBSCertList.

Why: for a CRL of 100,000 entries, pyca/cryptography's path — ``CertificateRevocationListBuilder.sign``
(the whole list re-encoded), ``public_bytes`` and ``tbs_certlist_bytes`` (each re-encodes it again) —
costs seconds, three times per publication, although the entries never change. Here each entry is DER
encoded once (:func:`entry`, cached by the caller), the CRL's header and extensions still come from
cryptography (an empty-list builder, signed by the signer with its throwaway key), and
:func:`with_entries` puts the list into that TBSCertList (RFC 5280 §5.1)::

    TBSCertList ::= SEQUENCE { version, signature, issuer, thisUpdate, nextUpdate,
                               revokedCertificates SEQUENCE OF SEQUENCE {...} OPTIONAL,
                               crlExtensions [0] EXPLICIT Extensions OPTIONAL }

The result is byte for byte what cryptography encodes for the same CRL (``tests/unit/test_crl_der.py``),
so the linter and the HSM see the same structure either way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from ckms_app.x509 import der

_CRL_REASON = der.oid("2.5.29.21")
#: RFC 5280 §5.3.1 CRLReason values (ENUMERATED) of cryptography's flags
REASON_CODES: dict[x509.ReasonFlags, int] = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}


def integer(value: int) -> bytes:
    """A positive serial number as a DER INTEGER (minimal, with a 0x00 pad when the top bit is set)."""
    if value <= 0:
        raise ValueError("a certificate serial number is positive (RFC 5280 §4.1.2.2)")
    return der.tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def time(moment: dt.datetime) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; seconds, "Z"."""
    utc = moment.astimezone(dt.UTC) if moment.tzinfo else moment
    if 1950 <= utc.year <= 2049:
        return der.tlv(0x17, utc.strftime("%y%m%d%H%M%SZ").encode())
    return der.tlv(0x18, utc.strftime("%Y%m%d%H%M%SZ").encode())


def entry(serial: int, revoked_at: dt.datetime, reason_code: int | None) -> bytes:
    """One revokedCertificates element; ``reason_code`` None omits the reasonCode extension."""
    body = integer(serial) + time(revoked_at)
    if reason_code is not None:
        extension = der.tlv(0x30, _CRL_REASON + der.tlv(0x04, der.tlv(0x0A, bytes((reason_code,)))))
        body += der.tlv(0x30, extension)
    return der.tlv(0x30, body)


def with_entries(tbs: bytes, entries: Sequence[bytes]) -> bytes:
    """``tbs`` (a TBSCertList without revokedCertificates) with ``entries`` put in their place; no
    entries: ``tbs`` itself."""
    if not entries:
        return tbs
    tag, content, end = der.read_tlv(tbs)
    if tag != 0x30 or end != len(tbs):
        raise ValueError("not a DER TBSCertList")
    offset = 0
    for _ in range(5):  # version, signature, issuer, thisUpdate, nextUpdate
        _, _, offset = der.read_tlv(content, offset)
    if offset < len(content) and content[offset] == 0x30:
        raise ValueError("the TBSCertList already has revokedCertificates")
    listed = der.tlv(0x30, b"".join(entries))
    return der.tlv(0x30, content[:offset] + listed + content[offset:])


def signature_algorithm(tbs: bytes) -> bytes:
    """The TBSCertList's own ``signature`` AlgorithmIdentifier (DER); the outer one must equal it."""
    _, content, _ = der.read_tlv(tbs)
    _, _, after_version = der.read_tlv(content)
    _, _, after_algorithm = der.read_tlv(content, after_version)
    return content[after_version:after_algorithm]
