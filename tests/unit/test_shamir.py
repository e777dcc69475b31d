"""Shamir 2-of-3 over GF(256) (E.23): any two rebuild, one says nothing, bad shares are detected."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest

from ckms_app.errors import ShamirError
from ckms_app.hsm.shamir import TAG_BYTES, Share, combine, gf_div, gf_mul, split


def slow_mul(a: int, b: int) -> int:
    """Reference carry-less multiply modulo the AES polynomial."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return out


def test_field_tables_match_reference_multiplication() -> None:
    for a in range(256):
        for b in range(256):
            assert gf_mul(a, b) == slow_mul(a, b)
    for a in range(256):
        for b in range(1, 256):
            assert gf_mul(gf_div(a, b), b) == a


def test_known_aes_field_products() -> None:
    # FIPS 197 section 4.2: {57} x {83} = {c1}, {57} x {13} = {fe}
    assert gf_mul(0x57, 0x83) == 0xC1
    assert gf_mul(0x57, 0x13) == 0xFE


@pytest.mark.parametrize("length", [1, 2, 31, 32, 97, 300])
def test_any_two_of_three_reconstruct(length: int) -> None:
    rng = random.Random(length)
    for _ in range(25):
        secret = bytes(rng.randrange(256) for _ in range(length))
        shares = split(secret, 2, 3)
        assert [s.index for s in shares] == [1, 2, 3]
        for pair in itertools.permutations(shares, 2):
            assert combine(list(pair)) == secret
        assert combine(shares) == secret


def test_other_thresholds() -> None:
    secret = os.urandom(40)
    shares = split(secret, 3, 5)
    for trio in itertools.combinations(shares, 3):
        assert combine(list(trio)) == secret
    for pair in itertools.combinations(shares, 2):
        with pytest.raises(ShamirError, match="3 are needed"):
            combine(list(pair))


def test_one_share_is_refused() -> None:
    shares = split(b"so-pin", 2, 3)
    for s in shares:
        with pytest.raises(ShamirError, match="2 are needed"):
            combine([s])
    with pytest.raises(ShamirError, match="2 are needed"):
        combine([shares[0], shares[0]])  # the same share twice is still one share


def test_single_share_is_uniform_whatever_the_secret() -> None:
    """Structural check of "one share reveals nothing": for a fixed secret byte, share bytes are
    uniformly distributed; two very different secrets give indistinguishable share statistics."""
    n = 20_000
    for secret in (b"\x00" * n, b"\xff" * n):
        counts = Counter(split(secret, 2, 3)[0].value[:n])
        # chi-square with 255 degrees of freedom: mean 255, sd ~22.6; 400 is > 6 sd.
        expected = n / 256
        chi2 = sum((counts.get(v, 0) - expected) ** 2 / expected for v in range(256))
        assert chi2 < 400, chi2
    # and a share never equals the secret's bytes more than chance would allow
    secret = os.urandom(n)
    share = split(secret, 2, 3)[1].value[:n]
    assert sum(a == b for a, b in zip(secret, share, strict=True)) < n / 256 * 2


def test_shares_carry_no_plaintext_structure() -> None:
    secret = b"ckms-so-pin-" * 8
    for s in split(secret, 2, 3):
        assert secret[:12] not in s.value
        assert len(s.value) == len(secret) + TAG_BYTES  # fixed overhead, no length beyond the secret's


def test_fresh_randomness_every_split() -> None:
    a, b = split(b"same secret", 2, 3), split(b"same secret", 2, 3)
    assert all(x.value != y.value for x, y in zip(a, b, strict=True))


def test_corrupted_share_detected_by_tag() -> None:
    rng = random.Random(7)
    secret = os.urandom(64)
    shares = split(secret, 2, 3)
    for _ in range(200):
        victim = rng.randrange(3)
        pos = rng.randrange(len(shares[victim].value))
        bad = bytearray(shares[victim].value)
        bad[pos] ^= 1 << rng.randrange(8)
        corrupted = Share(shares[victim].index, 2, bytes(bad))
        other = shares[(victim + 1) % 3]
        with pytest.raises(ShamirError, match="wrong, corrupted"):
            combine([corrupted, other])


def test_share_from_another_split_detected() -> None:
    secret = os.urandom(32)
    first, second = split(secret, 2, 3), split(secret, 2, 3)
    with pytest.raises(ShamirError, match="wrong, corrupted"):
        combine([first[0], second[1]])
    other_secret = split(os.urandom(32), 2, 3)
    with pytest.raises(ShamirError):
        combine([first[0], other_secret[1]])


def test_wrong_index_detected() -> None:
    shares = split(os.urandom(32), 2, 3)
    relabelled = Share(3, 2, shares[0].value)  # share 1's bytes presented as share 3
    with pytest.raises(ShamirError):
        combine([relabelled, shares[1]])


def test_mismatched_sets_and_bad_parameters() -> None:
    a = split(os.urandom(32), 2, 3)
    b = split(os.urandom(33), 2, 3)
    with pytest.raises(ShamirError, match="one set"):
        combine([a[0], b[1]])
    with pytest.raises(ShamirError, match="index 1"):
        combine([a[0], Share(1, 2, bytes(len(a[0].value)))])
    with pytest.raises(ShamirError):
        split(b"", 2, 3)
    with pytest.raises(ShamirError):
        split(b"x", 1, 3)
    with pytest.raises(ShamirError):
        split(b"x", 4, 3)
    with pytest.raises(ShamirError):
        split(b"x", 2, 256)
    with pytest.raises(ShamirError):
        Share(0, 2, b"x")
    with pytest.raises(ShamirError):
        combine([])
