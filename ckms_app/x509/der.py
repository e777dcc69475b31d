"""The few DER encodings ckms writes by hand (X.690 §8.1): lengths and tag-length-value elements.

pyca/cryptography builds certificates, CRLs and requests; only the assembly of a signed structure
around linted bytes and EST's CsrAttrs need these.
"""

from __future__ import annotations


def length(n: int) -> bytes:
    """A DER length: short form below 128, long form (0x80 | number of bytes, then the bytes) above."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    """One element: its tag, its length, its content."""
    return bytes((tag,)) + length(len(body)) + body
