"""The algorithms the guidance allows the CA (A.54, A.62): ECDSA on P-256 with SHA-256 and P-384 with
SHA-384 (RFC 5758). Every layer that names a curve takes it from here."""

from __future__ import annotations

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


CURVES: dict[str, Curve] = {
    "P-256": Curve("P-256", "prime256v1", ec.SECP256R1(), hashes.SHA256()),
    "P-384": Curve("P-384", "secp384r1", ec.SECP384R1(), hashes.SHA384()),
}


def curve_by_name(name: str) -> Curve:
    try:
        return CURVES[name]
    except KeyError:
        raise HsmError(f"unsupported curve {name!r}; choose one of {', '.join(CURVES)}") from None


def curve_of(key: ec.EllipticCurvePublicKey) -> Curve:
    for curve in CURVES.values():
        if curve.crypto_curve.name == key.curve.name:
            return curve
    raise HsmError(f"unsupported curve {key.curve.name}")
