"""Who may do what (A.27–A.31, E.03, E.05 d).

Four roles, each a fixed set of operations. Individuals are entities in the database bound to
one client certificate; the daemon resolves the TLS peer certificate to an entity on every
request, so disabling an entity or revoking its certificate takes effect at once.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from .errors import NotAuthenticated, NotAuthorized
from .storage import certificates, entities

ROLES = ("authority", "administrator", "operator", "auditor")

# Operators issue and revoke; administrators run the CA (keys, HSM, accounts, CRL publication);
# authority and auditor read the records and the trail.
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset({"certificate.issue", "certificate.revoke", "certificate.read", "crl.publish"}),
    "administrator": frozenset({"certificate.read", "crl.publish", "entity.manage", "hsm.manage"}),
    "authority": frozenset({"certificate.read", "audit.read"}),
    "auditor": frozenset({"certificate.read", "audit.read"}),
}
# Which certificate profiles each role may request (E.05 d).
PERMITTED_PROFILES: dict[str, frozenset[str]] = {"operator": frozenset({"device"})}


@dataclass(frozen=True)
class Principal:
    entity_id: str
    role: str

    def require(self, operation: str, profile: str | None = None) -> None:
        if operation not in PERMISSIONS.get(self.role, frozenset()):
            raise NotAuthorized(f"role {self.role} may not perform {operation}")
        if profile is not None and profile not in PERMITTED_PROFILES.get(self.role, frozenset()):
            raise NotAuthorized(f"role {self.role} may not request profile {profile!r}")


SYSTEM = Principal("ckms", "system")  # the daemon itself (scheduled CRLs, start/stop)


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def resolve_principal(conn: Connection, peer_cert_der: bytes | None) -> Principal:
    """Map a verified TLS client certificate to an active entity, or refuse."""
    if not peer_cert_der:
        raise NotAuthenticated("a client certificate is required for this operation")
    fingerprint = certificate_fingerprint(peer_cert_der)
    row = conn.execute(
        select(entities.c.entity_id, entities.c.role, entities.c.status, certificates.c.status.label("cert_status"))
        .select_from(entities.outerjoin(certificates, certificates.c.serial == entities.c.cert_serial))
        .where(entities.c.cert_sha256 == fingerprint)
    ).first()
    if row is None:
        raise NotAuthorized("the client certificate does not belong to a registered entity")
    if row.status != "active":
        raise NotAuthorized(f"entity {row.entity_id} is {row.status}")
    if row.cert_status == "revoked":
        raise NotAuthorized(f"the client certificate of {row.entity_id} is revoked")
    return Principal(row.entity_id, row.role)


class PrincipalCache:
    """Resolved principals per client certificate, kept for ``ttl`` seconds.

    A terminal sends many requests over one connection; looking its entity up once a second
    instead of on every request keeps the database off the hot path, while a disabled entity or
    revoked credential is still refused within ``ttl`` (and at once in the process that made the
    change, which calls :meth:`clear`).
    """

    def __init__(self, engine: Engine, ttl: float = 1.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def resolve(self, peer_cert_der: bytes | None) -> Principal:
        now = time.monotonic()
        if peer_cert_der:
            hit = self._entries.get(peer_cert_der)
            if hit is not None and hit[0] > now:
                return hit[1]
        with self._engine.connect() as conn:
            principal = resolve_principal(conn, peer_cert_der)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[peer_cert_der] = (now + self._ttl, principal)  # type: ignore[index]
        return principal

    def clear(self) -> None:
        self._entries.clear()
