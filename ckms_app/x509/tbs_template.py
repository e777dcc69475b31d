"""An end-entity TBSCertificate put together from pre-encoded DER parts (the issuance hot path).

Why: cryptography's ``CertificateBuilder`` re-checks and re-encodes every extension of every
certificate and can only produce a TBS by signing it, so each issuance paid for a builder and a
throwaway-key certificate before the lint. The parts every certificate of a profile shares (version,
signature algorithm, issuer, the constant extensions) are taken once from a certificate cryptography
builds itself, so they are its own encodings; per certificate only the serial, the validity, the
subject, the key, its subjectKeyIdentifier and the subjectAltName are encoded::

    TBSCertificate ::= SEQUENCE { [0] version, serialNumber, signature, issuer, validity,
                                  subject, subjectPublicKeyInfo, [3] EXPLICIT extensions }

The result is byte for byte what the builder gives (``tests/unit/test_tbs_template.py``), and it is
still linted (signed with a throwaway key) before the HSM signs exactly these bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.x509 import crl_der, der

_SKI, _SAN = der.oid("2.5.29.14"), der.oid("2.5.29.17")
_SAMPLE_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _extension(oid: bytes, value: x509.ExtensionType) -> bytes:
    """A non-critical Extension: SEQUENCE { extnID, extnValue OCTET STRING } (criticality FALSE is
    the DEFAULT, so DER leaves it out)."""
    return der.tlv(0x30, oid + der.tlv(0x04, value.public_bytes()))


@dataclass(frozen=True)
class TbsParts:
    """What every TBSCertificate of one profile, issuer and signature hash shares, as DER."""

    version: bytes  # [0] EXPLICIT v3
    signature_issuer: bytes  # the signature AlgorithmIdentifier and the issuer Name
    head: bytes  # the extensions before subjectKeyIdentifier
    tail: bytes  # those after it; subjectAltName, when requested, comes last

    @classmethod
    def of_builder(
        cls,
        make_builder: Callable[..., x509.CertificateBuilder],
        signature_hash: hashes.SHA256 | hashes.SHA384,
    ) -> TbsParts:
        """The parts of the certificates ``make_builder`` (a template's ``builder``) makes: from one
        sample with an empty subject and no subjectAltName, signed by a throwaway key. The sample is
        dated 2000-01-01 so that its validity passes every limit (the CA's expiry, each curve's end of
        life): those are checked per request, and its dates are not among the parts kept."""
        key = ec.generate_private_key(ec.SECP256R1())
        sample = make_builder(
            subject=x509.Name([]), sans=(), public_key=key.public_key(), serial=1, now=_SAMPLE_DATE
        ).sign(key, signature_hash)
        _, content, _ = der.read_tlv(sample.tbs_certificate_bytes)
        ((_, extensions),) = der.children(der.children(content)[7][1])
        oids = [der.children(body)[0] for _, body in der.children(extensions)]
        return cls.of(sample.tbs_certificate_bytes, oids.index((0x06, _SKI[2:])))

    @classmethod
    def of(cls, sample_tbs: bytes, ski_index: int) -> TbsParts:
        """Split a sample TBS (no subjectAltName) whose extension ``ski_index`` is the SKI."""
        _, content, _ = der.read_tlv(sample_tbs)
        fields = der.children(content)  # version, serial, signature, issuer, validity, subject, spki, [3]
        if len(fields) != 8 or fields[0][0] != 0xA0 or fields[7][0] != 0xA3:
            raise ValueError("the sample is not a v3 TBSCertificate with extensions")
        ((_, extension_list),) = der.children(fields[7][1])
        extensions = [der.tlv(tag, body) for tag, body in der.children(extension_list)]
        if der.children(der.read_tlv(extensions[ski_index])[1])[0] != (0x06, _SKI[2:]):
            raise ValueError("the sample's extension at the SKI position is not a subjectKeyIdentifier")
        return cls(
            version=der.tlv(*fields[0]),
            signature_issuer=der.tlv(*fields[2]) + der.tlv(*fields[3]),
            head=b"".join(extensions[:ski_index]),
            tail=b"".join(extensions[ski_index + 1 :]),
        )

    def tbs(
        self,
        *,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
        subject: bytes,
        spki: bytes,
        san: x509.SubjectAlternativeName | None,
    ) -> bytes:
        """The DER TBSCertificate (``subject`` and ``spki`` already DER). The subjectKeyIdentifier is RFC
        5280 §4.2.1.2 method (1), SHA-1 of the subjectPublicKey bits, as cryptography's ``from_public_key``."""
        ((_, _), (_, key_bits)) = der.children(der.read_tlv(spki)[1])
        ski = x509.SubjectKeyIdentifier(
            hashlib.sha1(key_bits[1:], usedforsecurity=False).digest()
        )  # an identifier
        extensions = self.head + _extension(_SKI, ski) + self.tail
        if san is not None:
            extensions += _extension(_SAN, san)
        return der.tlv(
            0x30,
            self.version
            + crl_der.integer(serial)
            + self.signature_issuer
            + der.tlv(0x30, crl_der.time(not_before) + crl_der.time(not_after))
            + subject
            + spki
            + der.tlv(0xA3, der.tlv(0x30, extensions)),
        )
