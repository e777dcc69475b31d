"""People, role grants and the ACL for ``ckms entity`` / ``ckms acl`` (A.27–A.30, E.03–E.05, F.15).

Each individual is an entity with an ID, role grants and, once enrolled, one client certificate
issued for a key only they ever held (:mod:`ckms_app.authority.enrolment`). The local CLI
authenticates the acting individual by their credential and their own password, then checks the ACL.

Registering a person, granting or withdrawing a role, disabling a person and changing the ACL are
two-person changes (:mod:`ckms_app.authority.approvals`): the commands here only propose them.
Passwords and enrolment codes are one person's business, each one transaction with its audit record
and an alert.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.record import event
from ckms_app.authority import enrolment
from ckms_app.authority.approvals import Approvals
from ckms_app.authority.passwords import hash_password
from ckms_app.authority.people_changes import grants
from ckms_app.authority.rbac import load_acl
from ckms_app.errors import CkmsError, Conflict, NotAuthorized, NotFound
from ckms_app.store.chain import append_audit
from ckms_app.store.schema import entities, entity_roles


class AdminContext(Approvals):
    """What an authenticated person does with people and the ACL (``ckms entity``, ``ckms acl``)."""

    # --- two-person changes: these only propose -------------------------------------------------
    def add_entity(self, entity_id: str, roles: list[str]) -> dict[str, Any]:
        return self.propose("entity.create", {"entity_id": entity_id, "roles": sorted(set(roles))})

    def grant(self, entity_id: str, role: str) -> dict[str, Any]:
        return self.propose("entity.grant", {"entity_id": entity_id, "role": role})

    def revoke_role(self, entity_id: str, role: str) -> dict[str, Any]:
        return self.propose("entity.revoke-role", {"entity_id": entity_id, "role": role})

    def disable(self, entity_id: str, reason: str = "privilegeWithdrawn") -> dict[str, Any]:
        return self.propose("entity.disable", {"entity_id": entity_id, "reason": reason})

    def acl_change(self, grant: bool, role: str, operation: str, resource: str) -> dict[str, Any]:
        kind = "acl.grant" if grant else "acl.revoke"
        return self.propose(kind, {"role": role, "operation": operation, "resource": resource})

    # --- one person's business --------------------------------------------------------------------
    def set_password(self, entity_id: str, password: str) -> None:
        """Your own password, or (administrator) anyone's; with the token PIN only your first one."""
        actor = self._actor()
        try:
            password_hash = hash_password(password)
            if entity_id != actor.entity_id and (
                self.method != "password" or not actor.allows("entity.manage")
            ):
                raise NotAuthorized("only an administrator sets another entity's password")
            self._entity(entity_id)
        except CkmsError as exc:
            self._refuse("entity.password", entity_id, exc)
        row = event(actor, "entity.password", entity_id, "success", {"method": self.method})
        first_only = self.method == "token-pin"

        def unit(conn: Connection) -> None:
            append_audit(conn, [row])  # chain head first: the lock order every writer keeps
            query = update(entities).where(entities.c.entity_id == entity_id)
            if first_only:  # the PIN sets a first password, never replaces one set meanwhile
                query = query.where(entities.c.password_hash.is_(None))
            if conn.execute(query.values(password_hash=password_hash)).rowcount != 1:
                raise Conflict(f"{entity_id} has a password meanwhile")

        self.change(unit, [row])

    def issue_code(self, entity_id: str, ttl_hours: float = enrolment.DEFAULT_TTL_HOURS) -> dict[str, Any]:
        """Propose a fresh one-time enrolment code (lost code, re-enrolment). The proposer is shown the
        first half now; the approver is shown the second when approving; the person needs both. So no
        administrator alone can enrol as someone else (nor an authority alone)."""
        if not 0 < ttl_hours <= 24 * 30:
            raise CkmsError("--ttl-hours must be between 0 and 720", code="bad_request")
        first = enrolment.new_half()
        proposed = self.propose(
            "entity.code",
            {
                "entity_id": entity_id,
                "ttl_hours": ttl_hours,
                "first_half_sha256": enrolment.half_digest(first),
            },
        )
        return {
            **proposed,
            "entity": entity_id,
            "code_part": first,
            "next": "give this first half to the person; the approver of the change gives the second",
        }

    def list_entities(self) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            held: dict[str, list[str]] = {}
            for g in conn.execute(select(entity_roles).order_by(entity_roles.c.role)):
                held.setdefault(g.entity_id, []).append(g.role)
            return [
                {
                    "entity_id": r.entity_id,
                    "roles": held.get(r.entity_id, []),
                    "status": r.status,
                    "cert_serial": r.cert_serial,
                    "password_set": bool(r.password_hash),
                    "created_at": r.created_at.isoformat(),
                }
                for r in conn.execute(select(entities).order_by(entities.c.entity_id))
            ]

    def acl_list(self) -> list[dict[str, str]]:
        with self.reader.connect() as conn:
            return [{"role": r, "operation": op, "resource": res} for r, op, res in sorted(load_acl(conn))]

    def _entity(self, entity_id: str) -> Any:
        with self.reader.connect() as conn:
            row = conn.execute(select(entities).where(entities.c.entity_id == entity_id)).first()
            if row is None:
                raise NotFound(f"no entity {entity_id}")
            grants(conn, entity_id)
            return row
