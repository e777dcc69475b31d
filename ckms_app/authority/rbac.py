"""Who may do what (A.27–A.31, E.03, E.05 d).

Four roles (A.27). Which operations a role may perform, and on which profiles or keys, is an
access-control list in the database (``role_permissions``), seeded from :data:`DEFAULT_ACL` by
migration 2 and changed only by administrators (``ckms acl``), each change audited and alerted.
Individuals are entities bound to one client certificate, holding role grants; separation of
duties (A.29) refuses any grant that gives one entity two conflicting roles.

The daemon resolves the TLS peer certificate to an entity on every request. Resolved principals
are cached per process, but every request first reads the database's ``entity_generation``
counter, which every entity, grant, ACL or identity-certificate change increments in its own
transaction: a disabled entity or revoked credential is refused by every worker, on every node,
from the very next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from ckms_app.audit.record import SYSTEM as SYSTEM_ACTOR
from ckms_app.errors import CredentialRefused, NotAuthenticated, NotAuthorized
from ckms_app.store.point_reads import PointReader
from ckms_app.store.schema import certificates, entities, role_permissions, security_state, utcnow

#: resolved principals kept per worker (PrincipalCache): persons and terminals stay cached, one-off device
#: certificates are evicted first
CACHE_SIZE = 1024

ROLES = ("authority", "administrator", "operator", "auditor")

OPERATIONS = (
    "certificate.issue",
    "certificate.revoke",
    "certificate.read",
    "crl.publish",
    "entity.manage",
    "acl.manage",
    "hsm.manage",
    "key.manage",
    "audit.read",
    "audit.export",
    "change.approve",
)

# (role, operation, resource). Resource "*" is any; "profile:<name>" limits issuance to a profile and
# "key:<label>" names a key in the token (E.05 d). Operators issue and revoke (A.28); administrators
# run the CA: keys, HSM, accounts and ACLs (A.28, E.03); authority and auditor read and archive the
# logs. Seeded into role_permissions by migration 2; the database copy is the one enforced.
DEFAULT_ACL: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("operator", "certificate.issue", "profile:device"),
        ("operator", "certificate.revoke", "kind:end-entity"),
        ("administrator", "certificate.revoke", "kind:identity"),
        ("administrator", "certificate.revoke", "kind:tls-server"),
        ("operator", "certificate.read", "*"),
        ("operator", "crl.publish", "*"),
        ("administrator", "certificate.read", "*"),
        ("administrator", "crl.publish", "*"),
        ("administrator", "entity.manage", "*"),
        ("administrator", "acl.manage", "*"),
        ("administrator", "hsm.manage", "*"),
        ("administrator", "key.manage", "key:ckms-ca-key"),
        ("administrator", "key.manage", "key:ckms-audit-key"),
        ("authority", "certificate.read", "*"),
        ("authority", "audit.read", "*"),
        ("authority", "audit.export", "*"),
        ("auditor", "certificate.read", "*"),
        ("auditor", "audit.read", "*"),
        ("auditor", "audit.export", "*"),
        # The second person of every change to people, roles and the ACL (seeded by migration 4).
        ("authority", "change.approve", "kind:entity"),
        ("authority", "change.approve", "kind:role"),
        ("authority", "change.approve", "kind:acl"),
    }
)

# Separation of duties (A.29). The guidance's toy model separates all four roles of A.27, so every
# pair conflicts: whoever issues must not audit or administer what they issued, whoever administers
# keys and accounts must not audit them, and the authority that oversees operations is not one of
# the people it oversees. A deployment that relaxes a pair edits this matrix and says why.
CONFLICTING_ROLES: frozenset[frozenset[str]] = frozenset(
    frozenset({a, b}) for i, a in enumerate(ROLES) for b in ROLES[i + 1 :]
)


def role_conflicts(current: Iterable[str], new: str) -> list[str]:
    """The roles in ``current`` that ``new`` may not be combined with."""
    return sorted(r for r in current if r != new and frozenset({r, new}) in CONFLICTING_ROLES)


def role_label(roles: Iterable[str]) -> str:
    """What entities.role and audit records show for a set of grants."""
    return "+".join(sorted(roles)) or "none"


Permissions = frozenset[tuple[str, str]]  # (operation, resource)


def permissions_for(role: str, acl: Iterable[tuple[str, str, str]] = DEFAULT_ACL) -> Permissions:
    roles = set(role.split("+"))
    return frozenset((op, res) for r, op, res in acl if r in roles)


@dataclass(frozen=True)
class Principal:
    """An authenticated individual acting in its role(s), with the permissions the ACL gives them."""

    entity_id: str
    role: str
    permissions: Permissions | None = field(default=None, compare=False)  # None: the code default ACL

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self.role.split("+"))

    def allows(self, operation: str, resource: str | None = None) -> bool:
        perms = self.permissions if self.permissions is not None else permissions_for(self.role)
        if resource is None:
            return any(op == operation for op, _ in perms)
        return (operation, "*") in perms or (operation, resource) in perms

    def require(self, operation: str, resource: str | None = None) -> None:
        """The one authorisation decision, over the ACL in the database: ``operation`` at all, then on
        ``resource`` (``profile:device``, ``kind:identity``, ``key:ckms-ca-key``) when one is named."""
        if not self.allows(operation):
            raise NotAuthorized(f"role {self.role} may not perform {operation}")
        if resource is not None and not self.allows(operation, resource):
            kind, _, name = resource.partition(":")
            what = {"profile": f"request profile {name!r}", "key": f"use key {name!r} for {operation}"}.get(
                kind, f"perform {operation} on {kind} {name!r}"
            )
            raise NotAuthorized(f"role {self.role} may not {what}")


# The daemon itself as a principal (scheduled CRLs): the audit layer's system actor, with no permissions.
SYSTEM = Principal(SYSTEM_ACTOR.entity_id, SYSTEM_ACTOR.role, frozenset())


def load_acl(conn: Connection) -> frozenset[tuple[str, str, str]]:
    return frozenset((r.role, r.operation, r.resource) for r in conn.execute(select(role_permissions)))


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def resolve_principal(
    conn: Connection, peer_cert_der: bytes | None, acl: Iterable[tuple[str, str, str]] | None = None
) -> tuple[Principal, dt.datetime | None]:
    """Map a verified TLS client certificate to an active entity, or refuse.

    Returns the principal and the credential's notAfter, so a cache can refuse it the moment it
    expires even on a connection opened before.
    """
    if not peer_cert_der:
        raise NotAuthenticated("a client certificate is required for this operation")
    fingerprint = certificate_fingerprint(peer_cert_der)
    row = conn.execute(
        select(
            entities.c.entity_id,
            entities.c.role,
            entities.c.status,
            certificates.c.status.label("cert_status"),
            certificates.c.not_after,
        )
        .select_from(entities.outerjoin(certificates, certificates.c.serial == entities.c.cert_serial))
        .where(entities.c.cert_sha256 == fingerprint)
    ).first()
    if row is None:
        raise NotAuthorized("the client certificate does not belong to a registered entity")
    if row.status != "active":
        raise CredentialRefused(f"entity {row.entity_id} is {row.status}", row.entity_id, row.role)
    if row.cert_status == "revoked":
        raise CredentialRefused(
            f"the client certificate of {row.entity_id} is revoked", row.entity_id, row.role
        )
    if row.not_after is not None and row.not_after <= utcnow():
        raise CredentialRefused(
            f"the client certificate of {row.entity_id} has expired", row.entity_id, row.role
        )
    if row.role == "none":
        raise CredentialRefused(f"entity {row.entity_id} holds no role", row.entity_id, row.role)
    acl = load_acl(conn) if acl is None else acl
    return Principal(row.entity_id, row.role, permissions_for(row.role, acl)), row.not_after


class PrincipalCache:
    """Resolved principals per client certificate, valid while ``entity_generation`` is unchanged.

    A terminal sends many requests over one connection. Each request costs one primary-key read of
    the generation counter (no join, no ACL load); only when the counter moved (some entity, grant,
    ACL or identity certificate changed anywhere) are the cached principals and the ACL dropped and
    looked up again. So a revocation is effective from the next request in every worker.

    The counter is a driver-level point read (see ``point_reads``): about 8 µs on SQLite, against
    about 300 µs for a pooled SQLAlchemy round trip, which would cost the hot path several percent.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._generation = -1
        self._acl: frozenset[tuple[str, str, str]] | None = None
        # Keyed by the certificate's SHA-256, least recently used first, at most CACHE_SIZE entries:
        # devices that re-enrol with their own certificate each bring a new key, so an unbounded (or
        # DER-keyed, 10,000-entry) cache grew the workers by ~1 KB per device.
        self._entries: OrderedDict[bytes, tuple[Principal, dt.datetime | None]] = OrderedDict()
        self._point_reader = PointReader(engine)
        self._generation_read = self._point_reader.prepare(
            select(security_state.c.value).where(security_state.c.name == "entity_generation")
        )

    def _read_generation(self) -> int:
        row = self._point_reader.first(self._generation_read)
        return int(row[0]) if row else 0

    def resolve(self, peer_cert_der: bytes | None) -> Principal:
        generation = self._read_generation()
        if generation != self._generation:
            self._entries.clear()
            self._acl = None
            self._generation = generation
        key = hashlib.sha256(peer_cert_der).digest() if peer_cert_der else None
        hit = self._entries.get(key) if key is not None else None
        if hit is None:
            with self._engine.connect() as conn:
                if self._acl is None:
                    self._acl = load_acl(conn)
                hit = resolve_principal(conn, peer_cert_der, self._acl)
            # No client certificate: nothing to cache (a None key could never be read back).
            if key is not None:
                self._entries[key] = hit
                if len(self._entries) > CACHE_SIZE:
                    self._entries.popitem(last=False)
        elif key is not None:
            self._entries.move_to_end(key)
        principal, not_after = hit
        if not_after is not None and not_after <= utcnow():
            if key is not None:
                self._entries.pop(key, None)
            raise CredentialRefused(
                f"the client certificate of {principal.entity_id} has expired",
                principal.entity_id,
                principal.role,
            )
        return principal

    def clear(self) -> None:
        self._entries.clear()
        self._generation = -1

    def close(self) -> None:
        self._point_reader.close()
