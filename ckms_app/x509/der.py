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


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form (base-128 arcs, the first two folded into one byte)."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def read_tlv(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """One element at ``offset``: its tag, its content and the offset after it. ``ValueError`` when the
    bytes are not DER (indefinite or overlong lengths, truncation): the caller's input was malformed."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("unsupported DER length")
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + size > len(data):
        raise ValueError("truncated DER element")
    return tag, data[pos : pos + size], pos + size


def children(content: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements of a constructed element's content, in order."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(content):
        tag, body, offset = read_tlv(content, offset)
        out.append((tag, body))
    return out
