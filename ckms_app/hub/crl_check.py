"""Is this CRL one the hub may act on? Signature, issuer, freshness and order.

A CRL is a signed public document, so whoever carries it (the relay, a file copy, an attacker on the
path) cannot change what it says; what a carrier *can* do is replay an old one or hold back a new one.
Hence the checks: signed by the CA's key, issued by the CA, not from the future, not past its next
update, and never older than the CRL the hub already holds (CRL numbers only go up, RFC 5280 §5.2.3).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ckms_app.errors import CrlRejected

#: Clock difference tolerated between the CA and the checker for ``thisUpdate``.
DEFAULT_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CheckedCrl:
    """A CRL that passed :func:`check_crl`, with the facts the hub and the relay act on."""

    der: bytes
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    revoked_serials: frozenset[int]

    def age(self, now: dt.datetime) -> dt.timedelta:
        return now - self.this_update

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.next_update


def check_crl(
    der: bytes,
    ca_cert: x509.Certificate,
    *,
    now: dt.datetime | None = None,
    current_number: int | None = None,
    skew: dt.timedelta = DEFAULT_SKEW,
) -> CheckedCrl:
    """Parse and check ``der``; raise :class:`CrlRejected` naming the first failed check."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CrlRejected(f"not a DER CRL: {exc}") from None
    if crl.issuer != ca_cert.subject:
        raise CrlRejected(
            f"issuer {crl.issuer.rfc4514_string()} is not the CA {ca_cert.subject.rfc4514_string()}"
        )
    if not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise CrlRejected("signature does not verify under the CA's key")
    try:
        crl.extensions.get_extension_for_oid(ExtensionOID.DELTA_CRL_INDICATOR)
    except x509.ExtensionNotFound:
        pass
    else:
        raise CrlRejected("a delta CRL: the hub keeps full CRLs")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise CrlRejected("no CRL number") from None
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc
    if next_update is None:
        raise CrlRejected("no nextUpdate")
    if this_update > now + skew:
        raise CrlRejected(f"thisUpdate {this_update.isoformat()} is in the future (clock {now.isoformat()})")
    if now >= next_update:
        raise CrlRejected(f"expired: nextUpdate {next_update.isoformat()} has passed")
    if current_number is not None and number < current_number:
        raise CrlRejected(f"CRL number {number} is older than the held {current_number} (replay)")
    return CheckedCrl(der, number, this_update, next_update, frozenset(r.serial_number for r in crl))
