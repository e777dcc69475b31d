"""Revocation by serial with RFC 5280 reason codes (A.38, A.64).

A revocation is one durable commit (status change, revocation row, audit record); the CRL
publisher is then nudged so the serial is in a published CRL within the configured delay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.record import event, record, refusal
from ckms_app.authority.rbac import Principal
from ckms_app.errors import BadRequest, CkmsError, Conflict, NotFound
from ckms_app.store.chain import append_audit
from ckms_app.store.queries import bump_entity_generation
from ckms_app.store.schema import certificates, revocations, utcnow
from ckms_app.store.writer import GroupCommitWriter

# RFC 5280 §5.3.1 names → flags. certificateHold is left out on purpose: a ckms revocation is final.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_CODES = {
    0: "unspecified",
    1: "keyCompromise",
    2: "cACompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    9: "privilegeWithdrawn",
}


def parse_reason(value: str | int) -> str:
    """Accept an RFC 5280 reason name (any case) or its numeric code; return the canonical name."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        code = int(value)
        if code in _CODES:
            return _CODES[code]
        raise BadRequest(f"reason code {code} is not accepted; use one of {sorted(_CODES)}")
    for name in REASONS:
        if name.lower() == str(value).lower():
            return name
    raise BadRequest(f"unknown revocation reason {value!r}; use one of {', '.join(REASONS)}")


def parse_serial(value: str) -> str:
    """Serials are given as hex (as ``openssl x509 -serial`` prints, colons allowed)."""
    text = value.strip().lower().removeprefix("0x").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{1,40}", text):
        raise BadRequest(f"serial {value!r} is not a hexadecimal certificate serial number")
    return format(int(text, 16), "x")


@dataclass(frozen=True)
class Revoked:
    serial: str
    reason: str
    revoked_at: str


async def revoke(writer: GroupCommitWriter, principal: Principal, serial: str, reason: str | int) -> Revoked:
    try:
        principal.require("certificate.revoke")
        serial_hex = parse_serial(serial)
        reason_name = parse_reason(reason)
    except CkmsError as exc:
        await record(writer, principal, "certificate.revoke", str(serial), "denied", refusal(exc))
        raise
    now = utcnow()

    def unit(conn: Connection) -> Revoked:
        # The audit record first: append_audit locks the chain head until this transaction ends, so
        # on PostgreSQL concurrent revocations (other workers, other nodes) queue here. The status
        # read below then sees any revocation of the same serial committed meanwhile, and the
        # revocation ids are drawn in commit order, which the CRL publisher relies on (it publishes
        # revocations up to the highest id it has seen).
        append_audit(
            conn, [event(principal, "certificate.revoke", serial_hex, "success", {"reason": reason_name})]
        )
        row = conn.execute(
            select(certificates.c.status, certificates.c.kind).where(certificates.c.serial == serial_hex)
        ).first()
        if row is None:
            raise NotFound(f"no certificate with serial {serial_hex} was issued by this CA")
        # Which kinds a role may revoke is in the ACL (operators: devices; administrators: credentials).
        principal.require("certificate.revoke", f"kind:{row.kind}")
        if row.status == "revoked":
            raise Conflict(f"certificate {serial_hex} is already revoked")
        conn.execute(update(certificates).where(certificates.c.serial == serial_hex).values(status="revoked"))
        conn.execute(
            revocations.insert().values(
                serial=serial_hex, reason=reason_name, revoked_at=now, revoked_by=principal.entity_id
            )
        )
        if row.kind == "identity":  # someone's credential: every worker must refuse it from now on
            bump_entity_generation(conn)
        return Revoked(serial_hex, reason_name, now.isoformat())

    try:
        return await writer.submit(unit)
    except CkmsError as exc:
        await record(writer, principal, "certificate.revoke", serial_hex, "denied", refusal(exc))
        raise
