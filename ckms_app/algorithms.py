"""The algorithms the guidance allows the CA (A.54, A.62): ECDSA on P-256 with SHA-256 and P-384 with
SHA-384 (RFC 5758). Every layer that names a curve takes it from here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ckms_app.errors import HsmError


@dataclass(frozen=True)
class Curve:
    name: str  # the name used in config and on the CLI
    openssl_name: str
    crypto_curve: ec.EllipticCurve
    hash_algorithm: hashes.SHA256 | hashes.SHA384  # RFC 5758: P-256 → SHA-256, P-384 → SHA-384
    #: no certificate with a key (or signature) on this curve is valid after this instant (A.62):
    #: CRYPTREC rates 128-bit strength (P-256, SHA-256) for use through 2040 and 192-bit through 2070.
    #: The default of ``[algorithms] secure_until`` in ckms.toml (config.DEFAULT_SECURE_UNTIL); a request
    #: that would pass it is refused, not shortened (x509/profiles.py)
    secure_until: dt.datetime


CURVES: dict[str, Curve] = {
    "P-256": Curve(
        "P-256",
        "prime256v1",
        ec.SECP256R1(),
        hashes.SHA256(),
        dt.datetime(2040, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    ),
    "P-384": Curve(
        "P-384",
        "secp384r1",
        ec.SECP384R1(),
        hashes.SHA384(),
        dt.datetime(2070, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    ),
}
_BY_CRYPTO_NAME = {c.crypto_curve.name: c for c in CURVES.values()}


def curve_by_name(name: str) -> Curve:
    try:
        return CURVES[name]
    except KeyError:
        raise HsmError(f"unsupported curve {name!r}; choose one of {', '.join(CURVES)}") from None


def curve_of(key: ec.EllipticCurvePublicKey) -> Curve:
    curve = _BY_CRYPTO_NAME.get(key.curve.name)
    if curve is None:
        raise HsmError(f"unsupported curve {key.curve.name}")
    return curve
