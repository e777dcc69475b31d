"""Attested procedures: a person records that a procedural item was carried out (issue 18 part 6).

``ckms attest ITEM --evidence FILE`` stores the evidence file under the CA home, named by its SHA-256
(the same evidence twice is one file, and a stored file can be checked against the trail by its name),
and appends an ``attest`` record to the audit trail: the item, the person, the evidence's name and
SHA-256, and their note. The trail is the register: ``ckms attest list`` reads the attestations back
from it, so an attestation is as tamper-evident as every other record, and one cannot be added or
removed without the chain showing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from ckms_app.audit.record import event
from ckms_app.authority.admin_session import AdminSession
from ckms_app.errors import CkmsError, EvidenceError, NotAuthorized
from ckms_app.reporting.procedures import procedural_item
from ckms_app.store.chain import append_audit
from ckms_app.store.schema import audit_events

ATTEST_ACTION = "attest"
LIST_OPERATION = "audit.read"  # the register is part of the audit trail
EVIDENCE_DIR = Path("audit") / "evidence"  # under the CA home
MAX_EVIDENCE_BYTES = 64 * 1024 * 1024
MAX_NOTE_CHARS = 2000


def evidence_path(home: Path, sha256: str) -> Path:
    return home / EVIDENCE_DIR / sha256


def attest(session: AdminSession, item_id: str, evidence: Path, note: str = "") -> dict[str, Any]:
    """Record one attestation by the authenticated person; returns it as ``ckms attest list`` shows it.

    Refused: an unknown or non-procedural item, a person holding no role, an evidence file that is
    missing, empty, not a regular file or larger than 64 MiB, a note over 2000 characters. A refusal
    by an authenticated person is itself recorded (``denied``)."""
    actor = session.actor
    if actor is None:
        raise NotAuthorized("not authenticated")
    item = procedural_item(item_id)
    try:
        if actor.role == "none" or not actor.roles:
            raise NotAuthorized(f"{actor.entity_id} holds no role and may not attest")
        if len(note) > MAX_NOTE_CHARS:
            raise EvidenceError(f"the note is {len(note)} characters; at most {MAX_NOTE_CHARS}")
        data = _read_evidence(evidence)
    except CkmsError as exc:
        session.record(ATTEST_ACTION, item.id, "denied", {"code": exc.code, "reason": str(exc)})
        raise
    digest = _store(session.config.home, data)
    row = event(
        actor,
        ATTEST_ACTION,
        item.id,
        "success",
        {
            "item": item.id,
            "evidence_name": evidence.name,
            "evidence_sha256": digest,
            "evidence_size": len(data),
            "note": note,
        },
    )

    def unit(conn: Connection) -> int:
        return append_audit(conn, [row])[0]

    seq = int(session.change(unit, [row]))
    return {
        "item": item.id,
        "person": actor.entity_id,
        "role": actor.role,
        "at": _utc(row["at"].isoformat()),
        "evidence_name": evidence.name,
        "evidence_sha256": digest,
        "audit_seq": seq,
        "note": note,
    }


def _read_evidence(path: Path) -> bytes:
    if not path.exists():
        raise EvidenceError(f"{path}: no such evidence file")
    if path.is_symlink() or not path.is_file():
        raise EvidenceError(f"{path}: the evidence must be a regular file")
    size = path.stat().st_size
    if size == 0:
        raise EvidenceError(f"{path}: the evidence file is empty")
    if size > MAX_EVIDENCE_BYTES:
        raise EvidenceError(f"{path}: {size} bytes; evidence files are at most {MAX_EVIDENCE_BYTES} bytes")
    return path.read_bytes()


def _store(home: Path, data: bytes) -> str:
    """Content-addressed: ``HOME/audit/evidence/<sha256>``, 0640, written whole (temp file, fsync,
    rename); an existing file with that name already holds these bytes and is kept."""
    digest = hashlib.sha256(data).hexdigest()
    target = evidence_path(home, digest)
    for directory in (home / EVIDENCE_DIR.parent, home / EVIDENCE_DIR):  # 0750 each, whatever the umask
        directory.mkdir(mode=0o750, exist_ok=True)
        directory.chmod(0o750)
    if target.exists():
        return digest
    tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return digest


def list_attestations(reader: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every successful attestation on the trail, by item, oldest first: the ``attestations.json`` the
    report reads, ``{"<ITEM>": [{"person", "at", "evidence_name", "evidence_sha256", "audit_seq",
    "note"}]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    with reader.connect() as conn:
        rows = conn.execute(
            select(audit_events.c.seq, audit_events.c.at, audit_events.c.entity_id, audit_events.c.detail)
            .where(audit_events.c.action == ATTEST_ACTION, audit_events.c.outcome == "success")
            .order_by(audit_events.c.seq)
        ).all()
    for row in rows:
        detail = json.loads(row.detail)
        at = row.at.isoformat() if hasattr(row.at, "isoformat") else str(row.at)
        out.setdefault(str(detail["item"]), []).append(
            {
                "person": row.entity_id,
                "at": _utc(at),
                "evidence_name": str(detail["evidence_name"]),
                "evidence_sha256": str(detail["evidence_sha256"]),
                "audit_seq": int(row.seq),
                "note": str(detail.get("note", "")),
            }
        )
    return out


def _utc(iso: str) -> str:
    """Stored times are UTC (naive in SQLite): say so in the ISO-8601 text."""
    return iso if iso.endswith(("Z", "+00:00")) else iso + "+00:00"
