"""Schema migrations: ordered, append-only, applied at every start, each once.

A released migration never changes (it seeds frozen data, never a live constant of a higher layer);
a change is a new migration. On PostgreSQL an advisory lock lets several CA nodes start together.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from sqlalchemy import (
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from ckms_app.store.chain import (
    GENESIS_HASH,
    audit_record_hash,
)
from ckms_app.store.schema import (
    audit_chain_head,
    audit_events,
    audit_seals,
    certificates,
    change_proposals,
    crls,
    enrolment_codes,
    entities,
    entity_roles,
    metadata,
    revocations,
    role_permissions,
    schema_migrations,
    security_state,
    utcnow,
)

# The ACL that migration 2 seeds, frozen as it was released: a migration never follows later changes
# of the live default (ckms_app.authority.rbac.DEFAULT_ACL); a change to it is a new migration.
_MIGRATION_2_ACL: tuple[tuple[str, str, str], ...] = (
    ("administrator", "acl.manage", "*"),
    ("administrator", "certificate.read", "*"),
    ("administrator", "crl.publish", "*"),
    ("administrator", "entity.manage", "*"),
    ("administrator", "hsm.manage", "*"),
    ("administrator", "key.manage", "key:ckms-audit-key"),
    ("administrator", "key.manage", "key:ckms-ca-key"),
    ("auditor", "audit.export", "*"),
    ("auditor", "audit.read", "*"),
    ("auditor", "certificate.read", "*"),
    ("authority", "audit.export", "*"),
    ("authority", "audit.read", "*"),
    ("authority", "certificate.read", "*"),
    ("operator", "certificate.issue", "profile:device"),
    ("operator", "certificate.read", "*"),
    ("operator", "certificate.revoke", "*"),
    ("operator", "crl.publish", "*"),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema."""
    metadata.create_all(conn, tables=[certificates, revocations, crls, entities, audit_events])


def _migration_2(conn: Connection) -> None:
    """Role grants, ACLs, passwords, the audit hash chain and seals.

    Version 1 databases get the new columns; a fresh database already has them (migration 1 creates
    the current table definitions), hence the column check. Existing entities keep their role as a
    grant, and existing audit records are chained in order, so the chain starts at record 1.
    """
    for table, column in ((audit_events, audit_events.c.chain_hash), (entities, entities.c.password_hash)):
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if column.name not in present:
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            conn.exec_driver_sql(ddl)
    metadata.create_all(
        conn, tables=[entity_roles, role_permissions, audit_chain_head, audit_seals, security_state]
    )
    now = utcnow()
    for row in conn.execute(select(entities.c.entity_id, entities.c.role)).all():
        conn.execute(
            entity_roles.insert().values(
                entity_id=row.entity_id, role=row.role, granted_at=now, granted_by="migration-2"
            )
        )
    conn.execute(
        role_permissions.insert(),
        [{"role": r, "operation": op, "resource": res} for r, op, res in _MIGRATION_2_ACL],
    )
    conn.execute(security_state.insert().values(name="entity_generation", value=1))
    prev, last_seq = GENESIS_HASH, 0
    for record in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings().all():
        prev = audit_record_hash(prev, record)
        last_seq = record["seq"]
        conn.execute(update(audit_events).where(audit_events.c.seq == last_seq).values(chain_hash=prev))
    conn.execute(audit_chain_head.insert().values(chain_id=1, last_seq=last_seq, last_hash=prev))


def _migration_3(conn: Connection) -> None:
    """Revocation rights by certificate kind, in the ACL instead of a role name in the code: operators
    revoke device certificates, administrators revoke identity and TLS certificates."""
    conn.execute(
        role_permissions.delete().where(
            role_permissions.c.operation == "certificate.revoke", role_permissions.c.resource == "*"
        )
    )
    present = {
        (r.role, r.resource)
        for r in conn.execute(
            select(role_permissions.c.role, role_permissions.c.resource).where(
                role_permissions.c.operation == "certificate.revoke"
            )
        )
    }
    wanted = [
        ("operator", "kind:end-entity"),
        ("administrator", "kind:identity"),
        ("administrator", "kind:tls-server"),
    ]
    rows = [
        {"role": r, "operation": "certificate.revoke", "resource": res}
        for r, res in wanted
        if (r, res) not in present
    ]
    if rows:
        conn.execute(role_permissions.insert(), rows)
    conn.execute(
        update(security_state)
        .where(security_state.c.name == "entity_generation")
        .values(value=security_state.c.value + 1)
    )


# The approvers of two-person changes, as released with migration 4 (frozen like _MIGRATION_2_ACL).
_MIGRATION_4_ACL: tuple[tuple[str, str, str], ...] = (
    ("authority", "change.approve", "kind:acl"),
    ("authority", "change.approve", "kind:entity"),
    ("authority", "change.approve", "kind:role"),
)


def _migration_4(conn: Connection) -> None:
    """One-time enrolment codes and two-person change proposals; the authority approves changes.

    ``entities.status`` gains the value ``pending`` (registered, not yet enrolled): a string column
    already, so no DDL for it. The ACL rows are added only where missing, so a database whose ACL an
    administrator already changed keeps its other rows as they are."""
    metadata.create_all(conn, tables=[enrolment_codes, change_proposals], checkfirst=True)
    present = {(r.role, r.operation, r.resource) for r in conn.execute(select(role_permissions))}
    rows = [
        {"role": r, "operation": op, "resource": res}
        for r, op, res in _MIGRATION_4_ACL
        if (r, op, res) not in present
    ]
    if rows:
        conn.execute(role_permissions.insert(), rows)
    conn.execute(
        update(security_state)
        .where(security_state.c.name == "entity_generation")
        .values(value=security_state.c.value + 1)
    )


def _key_id(der: bytes, own: bool) -> str | None:
    """A certificate's own key identifier (``own``) or its issuer's (AKI; a self-signed one's SKI).
    Frozen with migration 5: it parses with cryptography directly (the store sits below ckms_app.x509)."""
    cert = x509.load_der_x509_certificate(der)
    ext = cert.extensions
    if not own:
        try:
            aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        if aki is not None:
            return aki.hex()
        if cert.issuer != cert.subject:
            return None
    try:
        return ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return None


def _migration_5(conn: Connection) -> None:
    """The issuing key of every certificate and CRL (``issuer_key_id``), for CA key rollover: after it
    two keys of one CA (same name) sign side by side, so certificates and CRLs are told apart by key.

    Before this version a CA had exactly one key, so the backfill is one UPDATE with that key's
    identifier (the SKI of the ``ca`` row) for the certificates it issued and for its CRLs; only the
    ``ca`` rows themselves (and a database that holds no or several CA keys) are parsed one by one."""
    for table in (certificates, crls):
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if "issuer_key_id" not in present:
            column = table.c.issuer_key_id
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            )
    if "ix_certificates_issuer_not_after" not in {
        i["name"] for i in inspect(conn).get_indexes("certificates")
    }:
        for index in certificates.indexes:
            if index.name == "ix_certificates_issuer_not_after":
                index.create(conn)
    ca_rows = conn.execute(
        select(certificates.c.serial, certificates.c.der).where(certificates.c.kind == "ca")
    ).all()
    ca_keys = {_key_id(row.der, own=True) for row in ca_rows} - {None}
    for row in ca_rows:
        conn.execute(
            update(certificates)
            .where(certificates.c.serial == row.serial)
            .values(issuer_key_id=_key_id(row.der, own=False))
        )
    pending = certificates.c.issuer_key_id.is_(None)
    if len(ca_keys) == 1:
        (ca_key,) = ca_keys
        conn.execute(update(certificates).where(pending).values(issuer_key_id=ca_key))
        conn.execute(update(crls).where(crls.c.issuer_key_id.is_(None)).values(issuer_key_id=ca_key))
        return
    for row in conn.execute(select(certificates.c.serial, certificates.c.der).where(pending)).all():
        conn.execute(
            update(certificates)
            .where(certificates.c.serial == row.serial)
            .values(issuer_key_id=_key_id(row.der, own=False))
        )


# Ordered, append-only. A migration never changes once released; add a new one instead.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
]


# pg_advisory_xact_lock key of the schema migrations ("ckms_mig" in ASCII).
MIGRATION_LOCK_KEY = 0x636B6D735F6D6967


def migrate(engine: Engine) -> int:
    """Apply pending migrations; returns the schema version. Safe to run on every start.

    On PostgreSQL several CA nodes may start at once (after an upgrade, say): a transaction-scoped
    advisory lock lets one of them apply what is pending while the others wait, then find it done.
    Without it two nodes would both create the tables or apply the same migration twice.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        schema_migrations.create(conn, checkfirst=True)
        done = {row[0] for row in conn.execute(select(schema_migrations.c.version))}
        for version, apply in MIGRATIONS:
            if version not in done:
                apply(conn)
                conn.execute(schema_migrations.insert().values(version=version, applied_at=utcnow()))
        return max(v for v, _ in MIGRATIONS)
