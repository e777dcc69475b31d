"""Put a certificate together from the linted TBSCertificate and the HSM's signature.

Pre-issuance linting needs a complete certificate, so the TBSCertificate is first signed with a
throwaway key. The certificate that is issued must carry exactly the bytes the linter saw, so
instead of encoding the TBSCertificate a second time for the HSM, the HSM signs those very bytes
and the certificate is assembled around them (RFC 5280 §4.1):

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }

The signatureAlgorithm is taken from the throwaway-signed copy, which used the CA's curve and hash,
so it is the CA's. This removes the second TBS encoding from the issuance hot path and makes
"the issued certificate differs from the linted one" impossible by construction.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _element(der: bytes, offset: int) -> tuple[int, int]:
    """(start of content, end of element) of the DER element at ``offset``."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[offset + 2:offset + 2 + count], "big")
    start = offset + 2 + count
    return start, start + length


def signature_algorithm_der(certificate_der: bytes) -> bytes:
    """The DER AlgorithmIdentifier of a certificate (the element after its TBSCertificate)."""
    content_start, _ = _element(certificate_der, 0)
    _, tbs_end = _element(certificate_der, content_start)
    _, algorithm_end = _element(certificate_der, tbs_end)
    return certificate_der[tbs_end:algorithm_end]


def assemble(tbs_der: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """DER Certificate from its three parts (``signature``: the DER ECDSA-Sig-Value)."""
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs_der + signature_algorithm + bit_string
    return b"\x30" + _der_length(len(body)) + body


def sign_linted(precertificate: x509.Certificate, precertificate_der: bytes, signer: ec.EllipticCurvePrivateKey,
                signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> tuple[x509.Certificate, bytes]:
    """The HSM signs the linted TBSCertificate; returns the parsed certificate and its DER."""
    tbs = precertificate.tbs_certificate_bytes
    signature = signer.sign(tbs, signature_algorithm)
    der = assemble(tbs, signature_algorithm_der(precertificate_der), signature)
    return x509.load_der_x509_certificate(der), der
