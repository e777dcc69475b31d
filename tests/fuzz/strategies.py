"""Hypothesis strategies for what a hostile client controls: CSR DER, EST bodies, JSON bodies, ckms.toml."""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from ckms_app.x509.der import tlv

from . import hostile_csr as h

KEYS = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


def _valid_csr(key: ec.EllipticCurvePrivateKey, cn: str, sans: list[x509.GeneralName]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


SEEDS = [
    _valid_csr(KEYS[0], "device-0001", []),
    _valid_csr(
        KEYS[1],
        "device-0002",
        [x509.DNSName("d2.example"), x509.UniformResourceIdentifier("urn:ckms:device:d2")],
    ),
    *(maker() for maker, _ in h.HOSTILE.values()),
]

oids = st.builds(
    lambda first, second, rest: ".".join(map(str, [first, second, *rest])),
    st.integers(0, 2),
    st.integers(0, 39),
    st.lists(st.integers(0, 2**40), max_size=6),
)
# Every GeneralName form (RFC 5280 §4.2.1.6), well-formed or not inside.
general_names = st.one_of(
    st.builds(lambda s: tlv(0x82, s.encode()), st.text(max_size=40)),  # dNSName
    st.builds(lambda s: tlv(0x86, s.encode()), st.text(max_size=40)),  # URI
    st.builds(lambda s: tlv(0x81, s.encode()), st.text(max_size=40)),  # rfc822Name
    st.builds(lambda b: tlv(0x87, b), st.binary(max_size=20)),  # iPAddress
    st.builds(lambda o: tlv(0x88, h.oid(o)[2:]), oids),  # registeredID
    st.builds(lambda b: tlv(0xA0, b), st.binary(max_size=20)),  # otherName
    st.builds(lambda b: tlv(0xA4, b), st.binary(max_size=20)),  # directoryName
    st.just(h.x400_address()),
    st.just(h.edi_party_name()),
    st.builds(lambda tag, b: tlv(tag, b), st.integers(0x80, 0xBF), st.binary(max_size=12)),
)
extensions = st.one_of(
    st.builds(lambda names: h.san(*names), st.lists(general_names, min_size=0, max_size=4)),
    st.builds(lambda o, v, c: h.extension(o, v, c), oids, st.binary(max_size=24), st.booleans()),
)
spkis = st.sampled_from(["named", "unknown-curve", "explicit", "garbage"])
signature_oids = st.one_of(
    st.sampled_from([h.ECDSA_SHA256, "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4", "1.2.840.113549.1.1.11"]),
    oids,
)


@st.composite
def built_csrs(draw: st.DrawFn) -> bytes:
    """Correctly signed requests with drawn names, keys, extensions and algorithms."""
    key = draw(st.sampled_from(KEYS))
    kind = draw(spkis)
    spki = {
        "named": h.spki_of(key),
        "unknown-curve": h.spki_with_curve_oid(key, draw(oids)),
        "explicit": h.spki_explicit_p256(key),
        "garbage": tlv(0x30, draw(st.binary(max_size=40))),
    }[kind]
    return h.csr(
        draw(st.text(min_size=0, max_size=70)),
        key=key,
        spki=spki,
        extensions=tuple(draw(st.lists(extensions, max_size=3))),
        signature_oid=draw(signature_oids),
    )


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = SEEDS) -> bytes:
    """A real request with a few bytes flipped, inserted, removed, or cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


csr_ders = st.one_of(st.binary(max_size=300), built_csrs(), mutated())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    return (opener * depth + closer * depth).encode()


json_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(
        lambda serial, reason: json.dumps({"serial": serial, "reason": reason}).encode(),
        json_values,
        json_values,
    ),
    st.builds(nested, st.integers(1, 3000), st.sampled_from(["[", "{"])),
)
toml_values: st.SearchStrategy[Any] = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
