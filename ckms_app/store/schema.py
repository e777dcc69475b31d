"""The CA's tables (SQLAlchemy Core, one schema for SQLite and PostgreSQL): certificates, revocations,
CRLs, entities and their role grants, the ACL, the audit trail with its chain head and seals, counters.

Times are stored as UTC and always read back timezone-aware (:class:`UtcDateTime`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

metadata = MetaData()


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC: SQLite has no time zones, and mixing naive and aware
    datetimes is a bug waiting to happen."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(42), primary_key=True),  # lower-case hex, no leading zeros
    Column("kind", String(16), nullable=False),  # end-entity | identity | tls-server | ca
    Column("profile", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("sans", Text, nullable=False),
    Column("not_before", UtcDateTime(), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("csr_sha256", String(64), unique=True, nullable=True),
    Column("pubkey_sha256", String(64), nullable=False, index=True),
    Column("status", String(8), nullable=False),  # valid | revoked
    Column("der", LargeBinary, nullable=False),
    # the issuing CA key's identifier (its SKI, lower-case hex): names cannot tell a rolled-over CA's keys apart
    Column("issuer_key_id", String(64), nullable=True),
    Index("ix_certificates_issuer_not_after", "issuer_key_id", "not_after"),
)

revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # order for delta CRLs
    Column("serial", String(42), unique=True, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=False),
    Column("revoked_by", String(128), nullable=False),
)

crls = Table(
    "crls",
    metadata,
    Column("crl_number", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),  # full | delta
    Column("base_crl_number", BigInteger, nullable=True),
    Column("this_update", UtcDateTime(), nullable=False),
    Column("next_update", UtcDateTime(), nullable=False),
    Column("max_revocation_id", Integer, nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("issuer_key_id", String(64), nullable=True),  # the signing CA key's SKI (lower-case hex)
)

entities = Table(
    "entities",
    metadata,
    Column("entity_id", String(128), primary_key=True),
    # Label of the entity's current grants ("operator", "a+b", or "none"); the grants themselves are
    # in entity_roles. Rewritten in the same transaction as every grant change, so resolving a
    # principal stays one row read.
    Column("role", String(32), nullable=False),
    Column("cert_sha256", String(64), unique=True, nullable=True),  # its client certificate
    Column("cert_serial", String(42), nullable=True),
    Column("status", String(16), nullable=False),  # pending (not yet enrolled) | active | disabled
    Column("created_at", UtcDateTime(), nullable=False),
    Column("password_hash", Text, nullable=True),  # passwords.hash_password (scrypt), never the password
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("outcome", String(16), nullable=False),  # success | denied | error
    Column("detail", Text, nullable=False),
    # SHA-256 over the previous record's chain_hash and this record (see audit_record_hash).
    Column("chain_hash", String(64), nullable=True),
)

# --- schema version 2: entities with several role grants, ACLs, the audit chain and its seals ----
entity_roles = Table(
    "entity_roles",
    metadata,
    Column("entity_id", String(128), primary_key=True),
    Column("role", String(32), primary_key=True),
    Column("granted_at", UtcDateTime(), nullable=False),
    Column("granted_by", String(128), nullable=False),
)

# role -> operation -> resource ("*", "profile:<name>" or "key:<label>"); seeded from rbac.DEFAULT_ACL.
role_permissions = Table(
    "role_permissions",
    metadata,
    Column("role", String(32), primary_key=True),
    Column("operation", String(64), primary_key=True),
    Column("resource", String(128), primary_key=True),
)

# One row per chain: the newest record's seq and hash. Writers lock it (FOR UPDATE on PostgreSQL;
# SQLite's writer already holds the database write lock) so concurrent writers extend one chain.
audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("chain_id", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

# A signature by the HSM audit key over (up_to_seq, chain_hash, sealed_at).
audit_seals = Table(
    "audit_seals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("up_to_seq", BigInteger, nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("sealed_at", UtcDateTime(), nullable=False),
    Column("key_label", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

# Named counters. "entity_generation" grows with every change to entities, role grants, ACLs or an
# identity certificate's status, so each worker can tell with one cheap read that its cache is stale.
security_state = Table(
    "security_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# --- schema version 4: one-time enrolment codes and two-person changes ----------------------------
# One live code per entity (a new one replaces the old). Only a SHA-256 of the code is kept: the code is
# ≥ 128 random bits, so a slow hash buys nothing, and the daemon checks it on the event loop.
enrolment_codes = Table(
    "enrolment_codes",
    metadata,
    Column("entity_id", String(128), primary_key=True),
    Column("code_hash", String(80), nullable=False),  # "sha256$<hex>"
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("issued_by", String(128), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False),  # wrong codes so far; locked at MAX_ATTEMPTS
    Column("used_at", UtcDateTime(), nullable=True),
)

# A change to people, roles or the ACL: proposed by one person, applied by a second one's approval.
change_proposals = Table(
    "change_proposals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # entity.create | entity.grant | … | acl.revoke
    Column("payload", Text, nullable=False),  # JSON
    Column("proposer", String(128), nullable=False),
    Column("proposer_method", String(16), nullable=False),  # password | token-pin | enrolment-code | ceremony
    Column("created_at", UtcDateTime(), nullable=False),
    Column("status", String(16), nullable=False),  # proposed | approved | rejected
    Column("approver", String(128), nullable=True),
    Column("approver_method", String(16), nullable=True),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("reason", Text, nullable=True),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
