"""Shamir's secret sharing over GF(2^8) with an integrity tag (E.22, E.23).

Why our own: the PyPI candidates are small single-author packages (several unmaintained, some
for BIP39 phrases only); the scheme itself is about forty lines, so it lives here with its tests.

Each byte of the payload is the constant term of its own random polynomial of degree
``threshold - 1`` over GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1); share *i* holds the
polynomials evaluated at x = i. Fewer than ``threshold`` shares are uniformly random and say
nothing about the secret. Before splitting, a 16-byte tag (SHA-256 of a domain label and the
secret) is appended to the secret, so :func:`combine` detects a wrong or corrupted share instead
of silently returning garbage; the tag is itself shared, so it reveals nothing either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ckms_app.errors import ShamirError

TAG_BYTES = 16
_TAG_LABEL = b"ckms-shamir-v1\x00"
MAX_SHARES = 255


@dataclass(frozen=True)
class Share:
    """One share: its x coordinate (1..255), the threshold of its set and the y bytes."""

    index: int
    threshold: int
    value: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_SHARES:
            raise ShamirError(f"share index {self.index} is outside 1..{MAX_SHARES}")
        if not 2 <= self.threshold <= MAX_SHARES:
            raise ShamirError(f"threshold {self.threshold} is outside 2..{MAX_SHARES}")


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        # multiply by the generator 3 (x + 1): x*2 xor x, reduced by the AES polynomial
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def _tag(secret: bytes) -> bytes:
    return hashlib.sha256(_TAG_LABEL + secret).digest()[:TAG_BYTES]


def split(secret: bytes, threshold: int, shares: int) -> list[Share]:
    """Split ``secret`` into ``shares`` shares, any ``threshold`` of which rebuild it."""
    if not secret:
        raise ShamirError("nothing to split: the secret is empty")
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise ShamirError(f"need 2 <= threshold <= shares <= {MAX_SHARES}, got {threshold} of {shares}")
    payload = secret + _tag(secret)
    ys = [bytearray(len(payload)) for _ in range(shares)]
    for pos, byte in enumerate(payload):
        coefficients = [byte, *secrets.token_bytes(threshold - 1)]
        for i in range(shares):
            x = i + 1
            acc = 0
            for c in reversed(coefficients):  # Horner
                acc = gf_mul(acc, x) ^ c
            ys[i][pos] = acc
    return [Share(i + 1, threshold, bytes(y)) for i, y in enumerate(ys)]


def combine(shares: Sequence[Share]) -> bytes:
    """Rebuild the secret from at least ``threshold`` distinct shares of one set.

    Raises :class:`ShamirError` if there are too few shares, they disagree on threshold or length,
    or the rebuilt tag does not match (a wrong, corrupted or foreign share).
    """
    if not shares:
        raise ShamirError("no shares given")
    threshold = shares[0].threshold
    length = len(shares[0].value)
    if any(s.threshold != threshold for s in shares) or any(len(s.value) != length for s in shares):
        raise ShamirError("the shares do not belong to one set (threshold or length differ)")
    distinct: dict[int, Share] = {}
    for s in shares:
        if s.index in distinct and distinct[s.index].value != s.value:
            raise ShamirError(f"two different shares claim index {s.index}")
        distinct[s.index] = s
    if len(distinct) < threshold:
        raise ShamirError(f"{len(distinct)} distinct share(s) given; {threshold} are needed")
    if length <= TAG_BYTES:
        raise ShamirError("share too short to hold a secret and its tag")
    chosen = list(distinct.values())[:threshold]
    xs = [s.index for s in chosen]
    # Lagrange basis at x = 0: l_j(0) = prod_{m != j} x_m / (x_m - x_j); subtraction is xor.
    basis = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = gf_mul(num, xm)
                den = gf_mul(den, xm ^ xj)
        basis.append(gf_div(num, den))
    out = bytearray(length)
    for s, lj in zip(chosen, basis, strict=True):
        for pos, y in enumerate(s.value):
            out[pos] ^= gf_mul(y, lj)
    secret, tag = bytes(out[:-TAG_BYTES]), bytes(out[-TAG_BYTES:])
    if not hmac.compare_digest(tag, _tag(secret)):
        raise ShamirError(
            "the shares do not rebuild a valid secret: one is wrong, corrupted or from another set"
        )
    return secret
