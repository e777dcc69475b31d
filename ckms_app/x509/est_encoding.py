"""The one structure EST needs that pyca/cryptography does not build: CsrAttrs (RFC 7030 §4.5.2).

CsrAttrs tells a client what to put in its request: the signature algorithm and, as an
Attribute, the public-key type with the curves this CA accepts. A dozen lines of DER suffice.
"""

from __future__ import annotations

from ckms_app.x509.der import oid, tlv

_OIDS = {
    "ecdsa-with-SHA256": "1.2.840.10045.4.3.2",
    "ecdsa-with-SHA384": "1.2.840.10045.4.3.3",
    "id-ecPublicKey": "1.2.840.10045.2.1",
    "P-256": "1.2.840.10045.3.1.7",
    "P-384": "1.3.132.0.34",
}


def csr_attributes(hash_name: str, curves: tuple[str, ...]) -> bytes:
    """DER CsrAttrs: the CA's signature algorithm, then id-ecPublicKey with the accepted curves."""
    signature = oid(_OIDS[f"ecdsa-with-{hash_name.upper()}"])  # sha256 -> ecdsa-with-SHA256
    key_attr = tlv(0x30, oid(_OIDS["id-ecPublicKey"]) + tlv(0x31, b"".join(oid(_OIDS[c]) for c in curves)))
    return tlv(0x30, signature + key_attr)
