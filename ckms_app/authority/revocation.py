"""Revocation by serial with RFC 5280 reason codes (A.38, A.64), and recalls: many at once (A.42).

A revocation is one durable commit (status change, revocation row, audit record); the CRL
publisher is then nudged so the serial is in a published CRL within the configured delay. A recall
revokes a list of devices or serials the same way, all of them in one commit with one batch record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.record import event, record, refusal
from ckms_app.authority.rbac import Principal
from ckms_app.errors import BadRequest, CkmsError, Conflict, NotFound
from ckms_app.store.chain import append_audit
from ckms_app.store.inventory import DEVICE_ID, Target, certificates_by_serials, certificates_of_devices
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


# --- recalls: many certificates revoked in one audited, all-or-nothing batch (A.38, A.42) ------------
# A recall names devices (by device ID: the subject CN, see store.inventory) or certificates (by serial).
# It is one unit of work: one ``certificate.recall`` record naming the batch, then one
# ``certificate.revoke`` record per certificate exactly as a single revocation writes it (plus the batch
# ID), the status changes and the revocation rows, committed together or not at all. A name that matches
# no certificate refuses the whole recall (a typo in a recall list must not pass silently); certificates
# already revoked are reported and left alone, so a recall that was interrupted or repeated is safe to
# run again. A dry run answers the same question from a read connection and writes nothing.

MAX_RECALL = 10_000  # names per recall; a larger list is refused: split it into several recalls
RECALL_BY = ("device_id", "serial")


@dataclass(frozen=True)
class RecallPlan:
    """What a recall would do, or did: certificates to revoke, already revoked, and names not found."""

    batch: str
    by: str
    reason: str
    to_revoke: tuple[Target, ...]
    already_revoked: tuple[Target, ...]
    not_found: tuple[str, ...]
    revoked_at: str | None = None


def parse_recall(by: object, names: object, reason: object) -> tuple[str, list[str], str]:
    """Validate a recall request's fields: ``by``, the list of names (normalised), the reason name."""
    if by not in RECALL_BY:
        raise BadRequest(f"'by' must be one of {', '.join(RECALL_BY)}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadRequest("'names' must be a non-empty list of strings")
    if len(names) > MAX_RECALL:
        raise BadRequest(f"a recall names at most {MAX_RECALL} items ({len(names)} given): split the list")
    if by == "serial":
        clean = [parse_serial(n) for n in names]
    else:
        clean = [n.strip() for n in names]
        bad = [n for n in clean if not DEVICE_ID.fullmatch(n)]
        if bad:
            raise BadRequest(f"not a device ID: {bad[0][:64]!r} (pattern {DEVICE_ID.pattern})")
    return (
        str(by),
        sorted(set(clean)),
        parse_reason(reason if isinstance(reason, (str, int)) and not isinstance(reason, bool) else ""),
    )


def plan_recall(conn: Connection, batch: str, by: str, names: list[str], reason: str) -> RecallPlan:
    """Resolve the names to certificates in ``conn``; nothing is written."""
    if by == "serial":
        targets = certificates_by_serials(conn, names)
    else:  # devices: their device certificates only (identities and TLS servers are not devices)
        targets = [t for t in certificates_of_devices(conn, names) if t.kind == "end-entity"]
    seen = {t.named_by for t in targets}
    return RecallPlan(
        batch=batch,
        by=by,
        reason=reason,
        to_revoke=tuple(t for t in targets if t.status != "revoked"),
        already_revoked=tuple(t for t in targets if t.status == "revoked"),
        not_found=tuple(n for n in names if n not in seen),
    )


def new_batch_id() -> str:
    return f"recall-{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _refuse_missing(plan: RecallPlan) -> None:
    if plan.not_found:
        shown = ", ".join(plan.not_found[:10]) + (" …" if len(plan.not_found) > 10 else "")
        raise NotFound(
            f"{len(plan.not_found)} of the {plan.by.replace('_', ' ')}s named match no certificate of this "
            f"CA ({shown}); nothing was revoked"
        )


async def recall(
    writer: GroupCommitWriter, principal: Principal, plan: RecallPlan, names: list[str]
) -> RecallPlan:
    """Revoke every certificate of ``plan`` (resolved by :func:`plan_recall` on a read connection) in one
    durable commit, or none of them.

    The plan is read outside the writer so a recall over a large inventory never holds the write lock while
    it searches; the commit then revokes exactly the planned certificates that are still valid, and refuses
    the whole batch if any of them was revoked meanwhile. A certificate issued to a recalled device after
    the plan was read is not part of this recall (run it again: the ones revoked now are skipped).
    """
    now = utcnow()
    try:
        _refuse_missing(plan)
        for t in plan.to_revoke:  # every certificate's kind against the ACL, before anything is written
            principal.require("certificate.revoke", f"kind:{t.kind}")
    except CkmsError as exc:
        await record(writer, principal, "certificate.recall", plan.batch, "denied", refusal(exc))
        raise
    serials = [t.serial for t in plan.to_revoke]
    detail = {
        "by": plan.by,
        "reason": plan.reason,
        "names": len(names),
        "revoked": len(serials),
        "already_revoked": len(plan.already_revoked),
        "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }

    def unit(conn: Connection) -> RecallPlan:
        # Chain head first (the lock order of every writer), then the rows, as revoke() does.
        append_audit(
            conn,
            [event(principal, "certificate.recall", plan.batch, "success", detail)]
            + [
                event(
                    principal,
                    "certificate.revoke",
                    s,
                    "success",
                    {"reason": plan.reason, "batch": plan.batch},
                )
                for s in serials
            ],
        )
        for start in range(0, len(serials), 500):
            chunk = serials[start : start + 500]
            changed = conn.execute(
                update(certificates)
                .where(certificates.c.serial.in_(chunk), certificates.c.status == "valid")
                .values(status="revoked")
            ).rowcount
            if changed != len(chunk):  # revoked by someone else since the plan was read: none of it
                raise Conflict("certificates of this recall were revoked meanwhile; run the recall again")
        if serials:
            conn.execute(
                revocations.insert(),
                [
                    {"serial": s, "reason": plan.reason, "revoked_at": now, "revoked_by": principal.entity_id}
                    for s in serials
                ],
            )
        if any(t.kind == "identity" for t in plan.to_revoke):
            bump_entity_generation(conn)
        return dataclasses.replace(plan, revoked_at=now.isoformat())

    try:
        return await writer.submit(unit)
    except CkmsError as exc:
        await record(writer, principal, "certificate.recall", plan.batch, "denied", refusal(exc))
        raise
