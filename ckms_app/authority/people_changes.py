"""What each kind of change to people, roles and the ACL checks and writes (A.27–A.30, E.03–E.05).

A change is proposed by one person and applied by a second one's approval
(:mod:`ckms_app.authority.approvals`). Its checks run twice, against the database as it is at each
step: when it is proposed (for the proposer) and when it is approved (for the approver and again for
the proposer), because the state may have moved in between. Its writes run inside the approval's
transaction. Nobody may propose or approve a change that grants a role, or an ACL permission, to a
role they hold (:class:`~ckms_app.errors.SelfGrant`), and the four roles stay pairwise exclusive.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ckms_app.authority.rbac import OPERATIONS, ROLES, load_acl, role_conflicts, role_label
from ckms_app.errors import CkmsError, Conflict, NotFound, SelfGrant, SeparationOfDuties
from ckms_app.store.schema import certificates, entities, entity_roles, revocations, role_permissions

ENTITY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESOURCE = re.compile(r"(profile|key|kind):[A-Za-z0-9._-]{1,64}")

# kind → the resource an approver needs ``change.approve`` on
KINDS: dict[str, str] = {
    "entity.create": "kind:entity",
    "entity.disable": "kind:entity",
    "entity.code": "kind:entity",
    "entity.grant": "kind:role",
    "entity.revoke-role": "kind:role",
    "acl.grant": "kind:acl",
    "acl.revoke": "kind:acl",
}


def target_of(kind: str, payload: dict[str, Any]) -> str:
    """The audit target of a change: the entity, ``entity:role`` or ``role:operation:resource``."""
    if kind in ("entity.grant", "entity.revoke-role"):
        return f"{payload['entity_id']}:{payload['role']}"
    if kind.startswith("acl."):
        return f"{payload['role']}:{payload['operation']}:{payload['resource']}"
    return str(payload["entity_id"])


def granted_roles(kind: str, payload: dict[str, Any]) -> set[str]:
    """The roles this change gives something to (a role grant or an ACL permission)."""
    if kind == "entity.create":
        return set(payload["roles"])
    if kind in ("entity.grant", "acl.grant"):
        return {str(payload["role"])}
    return set()


def refuse_self_grant(kind: str, payload: dict[str, Any], who: str, roles: frozenset[str]) -> None:
    """No person proposes or approves a grant to a role they hold, however many people agree."""
    own = sorted(granted_roles(kind, payload) & roles)
    if own:
        what = "an ACL permission" if kind == "acl.grant" else "role " + ", ".join(own)
        raise SelfGrant(
            f"{who} holds {', '.join(own)} and may not propose or approve granting {what} to it "
            "(no self-grant)"
        )


def check(conn: Connection, kind: str, payload: dict[str, Any], actor_id: str) -> dict[str, Any]:
    """Refuse a change that is malformed, moot, breaks separation of duties or touches the actor's own
    grants; returns facts the audit record needs (the credential a disable revokes)."""
    if kind not in KINDS:
        raise CkmsError(f"unknown change kind {kind!r}", code="bad_request")
    if kind.startswith("acl."):
        _check_acl(conn, kind, payload)
        return {}
    entity_id = str(payload["entity_id"])
    if kind == "entity.create":
        _check_create(conn, entity_id, list(payload["roles"]))
        return {}
    if entity_id == actor_id:
        raise SeparationOfDuties(f"{actor_id} may not change their own role grants or status")
    row = conn.execute(select(entities).where(entities.c.entity_id == entity_id)).first()
    if row is None:
        raise NotFound(f"no entity {entity_id}")
    if kind == "entity.code":
        if row.status == "disabled":
            raise Conflict(f"entity {entity_id} is disabled")
        return {}
    current = grants(conn, entity_id)
    if kind == "entity.disable":
        if row.status == "disabled":
            raise Conflict(f"entity {entity_id} is already disabled")
        return {"cert_serial": row.cert_serial}
    role = str(payload["role"])
    check_role(role)
    if kind == "entity.revoke-role":
        if role not in current:
            raise NotFound(f"{entity_id} does not hold {role}")
        return {}
    if role in current:
        raise Conflict(f"{entity_id} already holds {role}")
    clash = role_conflicts(current, role)
    if clash:
        raise SeparationOfDuties(
            f"separation of duties: {entity_id} holds {', '.join(clash)}, which may not be combined with {role}"
        )
    return {}


def apply(conn: Connection, kind: str, payload: dict[str, Any], by: str, now: dt.datetime) -> None:
    """The change's writes, inside the approval's transaction (after its audit records)."""
    if kind.startswith("acl."):
        key = {"role": payload["role"], "operation": payload["operation"], "resource": payload["resource"]}
        if kind == "acl.grant":
            conn.execute(role_permissions.insert().values(**key))
        else:
            conn.execute(delete(role_permissions).filter_by(**key))
        return
    entity_id = str(payload["entity_id"])
    if kind == "entity.create":
        insert_pending(conn, entity_id, list(payload["roles"]), by, now)
    elif kind == "entity.code":
        return  # the approval stores the code's hash: only it holds the second half
    elif kind == "entity.disable":
        _disable(conn, entity_id, str(payload.get("reason") or "privilegeWithdrawn"), by, now)
    else:
        role = str(payload["role"])
        if kind == "entity.grant":
            conn.execute(
                entity_roles.insert().values(entity_id=entity_id, role=role, granted_at=now, granted_by=by)
            )
        else:
            conn.execute(
                delete(entity_roles).where(entity_roles.c.entity_id == entity_id, entity_roles.c.role == role)
            )
        new = [
            r.role
            for r in conn.execute(select(entity_roles.c.role).where(entity_roles.c.entity_id == entity_id))
        ]
        conn.execute(update(entities).where(entities.c.entity_id == entity_id).values(role=role_label(new)))


def insert_pending(conn: Connection, entity_id: str, roles: list[str], by: str, now: dt.datetime) -> None:
    """A registered person with roles and nothing else (no key, certificate or password) until they
    enrol: for the ceremony's ``--person`` and an approved ``entity add``."""
    roles = sorted(roles)
    conn.execute(
        entities.insert().values(
            entity_id=entity_id,
            role=role_label(roles),
            cert_sha256=None,
            cert_serial=None,
            status="pending",
            created_at=now,
            password_hash=None,
        )
    )
    conn.execute(
        entity_roles.insert(),
        [{"entity_id": entity_id, "role": r, "granted_at": now, "granted_by": by} for r in roles],
    )


def grants(conn: Connection, entity_id: str) -> list[str]:
    return sorted(
        r.role for r in conn.execute(select(entity_roles.c.role).where(entity_roles.c.entity_id == entity_id))
    )


def check_entity_id(entity_id: str) -> None:
    if not ENTITY_ID.fullmatch(entity_id):
        raise CkmsError(f"entity ID {entity_id!r} must match {ENTITY_ID.pattern}", code="bad_request")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise CkmsError(f"unknown role {role!r}; one of {', '.join(ROLES)}", code="bad_request")


def check_exclusive(roles: list[str]) -> None:
    """The roles of one person must be pairwise allowed together (CONFLICTING_ROLES)."""
    for i, r in enumerate(roles):
        clash = role_conflicts(roles[:i], r)
        if clash:
            raise SeparationOfDuties(f"separation of duties: {r} may not be combined with {', '.join(clash)}")


def _check_create(conn: Connection, entity_id: str, roles: list[str]) -> None:
    check_entity_id(entity_id)
    if not roles:
        raise CkmsError("give at least one --role", code="bad_request")
    for r in roles:
        check_role(r)
    check_exclusive(sorted(set(roles)))
    if conn.execute(select(entities.c.entity_id).where(entities.c.entity_id == entity_id)).first():
        raise Conflict(f"entity {entity_id} already exists")


def _check_acl(conn: Connection, kind: str, payload: dict[str, Any]) -> None:
    role, operation, resource = str(payload["role"]), str(payload["operation"]), str(payload["resource"])
    check_role(role)
    if operation not in OPERATIONS:
        raise CkmsError(
            f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}", code="bad_request"
        )
    if resource != "*" and not RESOURCE.fullmatch(resource):
        raise CkmsError("resource is '*', 'profile:NAME', 'key:LABEL' or 'kind:NAME'", code="bad_request")
    present = (role, operation, resource) in load_acl(conn)
    if (kind == "acl.grant") == present:
        raise Conflict(f"{role}:{operation}:{resource} is {'already' if present else 'not'} in the ACL")


def _disable(conn: Connection, entity_id: str, reason: str, by: str, now: dt.datetime) -> None:
    """Disable the entity and revoke its credential: effective in every worker from the next request."""
    serial = conn.execute(select(entities.c.cert_serial).where(entities.c.entity_id == entity_id)).scalar()
    conn.execute(update(entities).where(entities.c.entity_id == entity_id).values(status="disabled"))
    if serial:
        status = conn.execute(select(certificates.c.status).where(certificates.c.serial == serial)).scalar()
        if status == "valid":
            conn.execute(update(certificates).where(certificates.c.serial == serial).values(status="revoked"))
            conn.execute(
                revocations.insert().values(serial=serial, reason=reason, revoked_at=now, revoked_by=by)
            )
