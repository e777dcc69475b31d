"""Put a signed X.509 structure together from its linted to-be-signed bytes and the HSM's signature.

Pre-issuance linting needs a complete certificate (or CRL), so the TBS is first signed with a
throwaway key. What is issued must carry exactly the bytes the linter saw, so instead of encoding
the TBS a second time for the HSM, the HSM signs those very bytes and the structure is assembled
around them. Certificates (RFC 5280 §4.1), CRLs (§5.1) and PKCS#10 requests (RFC 2986) share one
shape:

    SEQUENCE { tbs, signatureAlgorithm AlgorithmIdentifier, signature BIT STRING }

The signatureAlgorithm is taken from the throwaway-signed copy, which used the CA's curve and hash,
so it is the CA's. Used by :mod:`ckms_app.authority.signer` only.
"""

from __future__ import annotations

from ckms_app.x509 import der


def _element(der: bytes, offset: int) -> tuple[int, int]:
    """(start of content, end of element) of the DER element at ``offset``."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[offset + 2 : offset + 2 + count], "big")
    start = offset + 2 + count
    return start, start + length


def signature_algorithm_der(certificate_der: bytes) -> bytes:
    """The DER AlgorithmIdentifier of a signed structure (the element after its TBS)."""
    content_start, _ = _element(certificate_der, 0)
    _, tbs_end = _element(certificate_der, content_start)
    _, algorithm_end = _element(certificate_der, tbs_end)
    return certificate_der[tbs_end:algorithm_end]


def certificate_tbs_signature_algorithm(tbs: bytes) -> bytes:
    """The ``signature`` AlgorithmIdentifier inside a v3 TBSCertificate (after version and serial): the
    outer signatureAlgorithm of the certificate must equal it (RFC 5280 §4.1.1.2)."""
    content_start, _ = _element(tbs, 0)
    _, version_end = _element(tbs, content_start)
    _, serial_end = _element(tbs, version_end)
    _, algorithm_end = _element(tbs, serial_end)
    return tbs[serial_end:algorithm_end]


def tbs_der(signed_der: bytes) -> bytes:
    """The to-be-signed element of a signed structure, sliced out of its DER as it is: for a CRL of
    100,000 entries this is a copy of its first 4.5 MB instead of a second encoding by cryptography
    (``tbs_certlist_bytes``), and it is by construction the very bytes the linter was given."""
    content_start, _ = _element(signed_der, 0)
    _, tbs_end = _element(signed_der, content_start)
    return signed_der[content_start:tbs_end]


def assemble(tbs_der: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """The DER structure from its three parts (``signature``: the DER ECDSA-Sig-Value)."""
    bit_string = der.tlv(0x03, b"\x00" + signature)  # BIT STRING, no unused bits
    body = tbs_der + signature_algorithm + bit_string
    return der.tlv(0x30, body)
