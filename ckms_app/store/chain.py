"""The audit hash chain: every record's hash covers the previous hash and the record's fields.

:func:`append_audit` is the only way records enter ``audit_events`` (a guard refuses any other
insert); it locks the chain head, so writers in several processes or nodes produce one unbroken
chain. Records are built by :mod:`ckms_app.audit.record`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from typing import Any

from sqlalchemy import (
    Table,
    bindparam,
    event,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Insert

from ckms_app.errors import AuditBypass
from ckms_app.store.schema import (
    audit_chain_head,
    audit_events,
    utcnow,
)


def audit_row(
    *, entity_id: str, role: str, action: str, target: str, outcome: str, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "entity_id": entity_id,
        "role": role,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": json.dumps(detail or {}, sort_keys=True, separators=(",", ":")),
    }


GENESIS_HASH = "0" * 64
AUDIT_FIELDS = ("seq", "at", "entity_id", "role", "action", "target", "outcome", "detail")


def audit_record_hash(prev_hash: str, record: Any) -> str:
    """The chain hash of one audit record: SHA-256 over the previous hash and the record's fields.

    The fields go in as canonical JSON (sorted keys, UTC time to the microsecond), so anyone with an
    export can recompute the chain without this code, and an edit to any field, a deleted or
    inserted record, or a change of order changes every hash from that record on.
    """
    at = record["at"]
    if isinstance(at, dt.datetime):
        at = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = {name: record[name] for name in AUDIT_FIELDS}
    fields["at"] = at
    fields["seq"] = int(fields["seq"])
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


# The writer's statements, built once: SQLAlchemy caches their compiled form by identity, so the
# group-commit thread skips constructing and cache-keying them on every batch.
_CHAIN_HEAD_FOR_UPDATE = (
    select(audit_chain_head.c.last_seq, audit_chain_head.c.last_hash)
    .where(audit_chain_head.c.chain_id == 1)
    .with_for_update()
)
_CHAIN_HEAD_UPDATE = (
    update(audit_chain_head)
    .where(audit_chain_head.c.chain_id == 1)
    .values(last_seq=bindparam("new_seq"), last_hash=bindparam("new_hash"))
)
_AUDIT_INSERT = audit_events.insert()


@functools.cache
def insert_into(table: Table) -> Insert:
    """The (immutable, cached) INSERT statement for a table."""
    return table.insert()


def append_audit(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Append audit records to the hash chain inside the caller's transaction; returns their seqs.

    The only way records enter ``audit_events`` (a guard refuses any other insert). The chain head
    is read with a row lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the writer already holds
    the database write lock from BEGIN IMMEDIATE), so writers in several processes or on several
    nodes queue here and produce one unbroken chain. Rolling back the transaction or savepoint also
    rolls back the head, so a failed unit leaves no gap.
    """
    if not rows:
        return []
    head = conn.execute(_CHAIN_HEAD_FOR_UPDATE).first()
    if head is None:
        raise RuntimeError("the audit chain head is missing: run the database migrations")
    chained, seq, prev = chain_records(int(head.last_seq), head.last_hash, rows)
    conn.info["ckms_audit_append"] = True
    try:
        conn.execute(_AUDIT_INSERT, chained)
    finally:
        conn.info.pop("ckms_audit_append", None)
    conn.execute(_CHAIN_HEAD_UPDATE, {"new_seq": seq, "new_hash": prev})
    return [r["seq"] for r in chained]


def chain_records(seq: int, prev: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, str]:
    """The records after the head (``seq``, ``prev``) with their sequence numbers and chain hashes,
    and the new head. Shared by :func:`append_audit` and the writer's driver-level batches."""
    chained = []
    for row in rows:
        seq += 1
        record = {**row, "seq": seq}
        prev = audit_record_hash(prev, record)
        record["chain_hash"] = prev
        chained.append(record)
    return chained, seq, prev


@event.listens_for(Engine, "before_execute")
def _refuse_unchained_audit_inserts(conn: Connection, clauseelement: Any, *_args: Any) -> None:
    if (
        getattr(clauseelement, "is_insert", False)
        and getattr(clauseelement, "table", None) is audit_events
        and not conn.info.get("ckms_audit_append")
    ):
        raise AuditBypass("audit records must be written with store.chain.append_audit (hash chain)")
