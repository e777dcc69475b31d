"""Is this CRL one the hub may act on? Issuer, signature, freshness and order, for several CAs.

A CRL is a signed public document, so whoever carries it (the relay, a file copy, an attacker on the
path) cannot change what it says; what a carrier *can* do is replay an old one or hold back a new one.
Hence the checks: signed by a trusted CA's key, not from the future, not past its next update, and never
older than the CRL already held **from the same issuer** (CRL numbers only go up, RFC 5280 §5.2.3).

Why several CAs: after a CA key rollover the old key (same subject DN, other key) keeps signing CRLs for
the certificates it issued while the new key issues new ones. Two trusted CAs may therefore share a name,
so the issuer is chosen by **key**: the CRL's authorityKeyIdentifier matched to each CA's
subjectKeyIdentifier (RFC 5280 §4.2.1.1 requires the AKI in CRLs). A CRL without an AKI is matched by
name only when the name is unambiguous among the trusted CAs; the signature decides in every case.
Issuers are keyed by the hex of that key identifier everywhere in the hub (state files, ``/status``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from ckms_app.errors import CrlRejected

#: Clock difference tolerated between the CA and the checker for ``thisUpdate``.
DEFAULT_SKEW = dt.timedelta(minutes=5)

_CrlKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True)
class CheckedCrl:
    """A CRL that passed :func:`check_crl`, with the facts the hub and the relay act on."""

    der: bytes
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    revoked_serials: frozenset[int]
    issuer_key_id: str  # hex of the issuing CA's subjectKeyIdentifier

    def age(self, now: dt.datetime) -> dt.timedelta:
        return now - self.this_update

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.next_update


def ca_key_id(ca_cert: x509.Certificate) -> str:
    """The CA's key identifier as hex: its SKI extension, or the RFC 5280 method-1 hash if it has none."""
    try:
        return ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest.hex()


def authority_key_id(item: x509.Certificate | x509.CertificateRevocationList) -> str | None:
    """The hex keyIdentifier of a certificate's or CRL's AKI, or None when it carries none."""
    try:
        key_id = item.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
    return key_id.hex() if key_id is not None else None


def trusted_by_key_id(cas: Sequence[x509.Certificate]) -> dict[str, x509.Certificate]:
    """The CA certificates keyed by key id; a re-issued certificate of the same key keeps the first one."""
    found: dict[str, x509.Certificate] = {}
    for ca in cas:
        found.setdefault(ca_key_id(ca), ca)
    return found


def _verifies(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    return isinstance(key, _CrlKey) and crl.is_signature_valid(key)


def issuing_ca(crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate]) -> x509.Certificate:
    """The trusted CA whose key signed ``crl``, chosen by AKI (never by name alone); else CrlRejected."""
    by_key = trusted_by_key_id(cas)
    aki = authority_key_id(crl)
    if aki is not None:
        ca = by_key.get(aki)
        if ca is None:
            raise CrlRejected(f"issuer key {aki} is not one of the trusted CAs ({', '.join(sorted(by_key))})")
        if crl.issuer != ca.subject:
            raise CrlRejected(
                f"issuer {crl.issuer.rfc4514_string()} is not the name of CA key {aki}"
                f" ({ca.subject.rfc4514_string()})"
            )
        if not _verifies(crl, ca):
            raise CrlRejected(f"signature does not verify under the key of CA {aki}")
        return ca
    named = [ca for ca in by_key.values() if ca.subject == crl.issuer]
    if not named:
        raise CrlRejected(f"issuer {crl.issuer.rfc4514_string()} is not a trusted CA")
    if len(named) > 1:
        raise CrlRejected(
            f"no authorityKeyIdentifier, and {len(named)} trusted CAs are named {crl.issuer.rfc4514_string()}"
        )
    if not _verifies(crl, named[0]):
        raise CrlRejected("signature does not verify under the CA's key")
    return named[0]


def check_crl(
    der: bytes,
    cas: x509.Certificate | Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
    current_numbers: Mapping[str, int] | None = None,
    current_number: int | None = None,
    skew: dt.timedelta = DEFAULT_SKEW,
) -> CheckedCrl:
    """Parse and check ``der``; raise :class:`CrlRejected` naming the first failed check.

    ``cas`` is the trusted CA certificate or certificates. ``current_numbers`` maps an issuer key id to
    the CRL number held from that issuer (the replay floor per issuer); ``current_number`` is the one-CA
    form kept for callers that hold a single number, and applies whatever the issuer.
    """
    if current_numbers is not None and current_number is not None:
        raise ValueError("give current_numbers or current_number, not both")
    now = now or dt.datetime.now(dt.UTC)
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CrlRejected(f"not a DER CRL: {exc}") from None
    ca = issuing_ca(crl, [cas] if isinstance(cas, x509.Certificate) else cas)
    key_id = ca_key_id(ca)
    number, this_update, next_update = _full_crl_facts(crl)
    if this_update > now + skew:
        raise CrlRejected(f"thisUpdate {this_update.isoformat()} is in the future (clock {now.isoformat()})")
    if now >= next_update:
        raise CrlRejected(f"expired: nextUpdate {next_update.isoformat()} has passed")
    held = current_number if current_numbers is None else current_numbers.get(key_id)
    if held is not None and number < held:
        whose = "" if current_numbers is None else f" of CA {key_id}"
        raise CrlRejected(f"CRL number {number} is older than the held {held}{whose} (replay)")
    revoked = frozenset(r.serial_number for r in crl)
    return CheckedCrl(der, number, this_update, next_update, revoked, key_id)


def _full_crl_facts(crl: x509.CertificateRevocationList) -> tuple[int, dt.datetime, dt.datetime]:
    """(CRL number, thisUpdate, nextUpdate) of a full CRL; a delta or a CRL missing either is refused."""
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
    next_update = crl.next_update_utc
    if next_update is None:
        raise CrlRejected("no nextUpdate")
    return number, crl.last_update_utc, next_update
