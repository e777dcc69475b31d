"""Entity, role-grant and ACL administration for ``ckms entity`` / ``ckms acl`` (A.27–A.30, E.03–E.05, F.15).

Each individual is an entity with an ID, one client certificate (signed by the CA key in the HSM
through the same lint-then-sign path as the ceremony's identities) and role grants. The local CLI
authenticates the acting individual twice: by their credential (the entity bound to the client
certificate, or ``--as``) and by their password (scrypt), then checks the ACL.

Every change is one transaction that also writes the audit record and bumps ``entity_generation``
(so each daemon worker drops its cached principals before the next request); every change and
every refusal raises a real-time alert. A grant that would give one entity two conflicting roles
(:data:`ckms_app.authority.rbac.CONFLICTING_ROLES`) is refused, audited and alerted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.record import event
from ckms_app.authority.admin_session import AdminSession
from ckms_app.authority.credentials import issue_identity_certificate, write_key_and_cert
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.passwords import hash_password
from ckms_app.authority.rbac import (
    OPERATIONS,
    ROLES,
    certificate_fingerprint,
    load_acl,
    role_conflicts,
    role_label,
)
from ckms_app.errors import CkmsError, Conflict, NotAuthorized, NotFound, SeparationOfDuties
from ckms_app.store.chain import append_audit
from ckms_app.store.queries import bump_entity_generation
from ckms_app.store.schema import certificates, entities, entity_roles, revocations, role_permissions, utcnow
from ckms_app.x509.csr_policy import public_key_sha256

ENTITY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AdminContext(AdminSession):
    """Entity, role-grant and ACL changes by an authenticated administrator (``ckms entity``, ``ckms acl``)."""

    # --- entities --------------------------------------------------------------------------------
    def add_entity(
        self, entity_id: str, roles: list[str], *, password: str | None, out_dir: Path
    ) -> dict[str, Any]:
        actor = self._actor()
        try:
            _check_entity_id(entity_id)
            roles = sorted(set(roles))
            if not roles:
                raise CkmsError("give at least one --role", code="bad_request")
            for r in roles:
                _check_role(r)
            for i, r in enumerate(roles):
                clash = role_conflicts(roles[:i], r)
                if clash:
                    raise SeparationOfDuties(
                        f"separation of duties: {r} may not be combined with {', '.join(clash)}"
                    )
            with self.reader.connect() as conn:
                if conn.execute(
                    select(entities.c.entity_id).where(entities.c.entity_id == entity_id)
                ).first():
                    raise Conflict(f"entity {entity_id} already exists")
            password_hash = hash_password(password) if password is not None else None
        except CkmsError as exc:
            self._refuse("entity.create", entity_id, exc)
        client_key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_identity_certificate(self.config, self.writer, entity_id, client_key)
        der = cert.public_bytes(serialization.Encoding.DER)

        cert_row = certificate_row(
            cert,
            der,
            kind="identity",
            profile="identity",
            requested_by=actor.entity_id,
            csr_sha256=None,
            pubkey_sha256=public_key_sha256(client_key.public_key()),
        )
        now = utcnow()
        label = role_label(roles)
        audit_rows = [
            event(
                actor,
                "certificate.issue",
                str(cert_row["serial"]),
                "success",
                {"kind": "identity", "subject": cert_row["subject"]},
            ),
            event(
                actor,
                "entity.create",
                entity_id,
                "success",
                {
                    "roles": roles,
                    "cert_serial": cert_row["serial"],
                    "password_set": password_hash is not None,
                },
            ),
        ]

        def unit(conn: Connection) -> None:
            # The audit chain head first: every writer locks it before any other row (the daemon's
            # revocations too), so a change here and a revocation elsewhere never wait on each
            # other in opposite order, and revocation ids are drawn in commit order (PostgreSQL).
            append_audit(conn, audit_rows)
            conn.execute(certificates.insert(), cert_row)
            conn.execute(
                entities.insert().values(
                    entity_id=entity_id,
                    role=label,
                    cert_sha256=certificate_fingerprint(der),
                    cert_serial=cert_row["serial"],
                    status="active",
                    created_at=now,
                    password_hash=password_hash,
                )
            )
            conn.execute(
                entity_roles.insert(),
                [
                    {"entity_id": entity_id, "role": r, "granted_at": now, "granted_by": actor.entity_id}
                    for r in roles
                ],
            )
            bump_entity_generation(conn)

        self.change(unit, audit_rows)
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = out_dir / f"{entity_id}.key", out_dir / f"{entity_id}.pem"
        write_key_and_cert(key_path, cert_path, client_key, cert)
        cert_path.chmod(0o600)
        return {
            "entity_id": entity_id,
            "roles": roles,
            "cert": str(cert_path),
            "key": str(key_path),
            "cert_serial": cert_row["serial"],
        }

    def grant(self, entity_id: str, role: str) -> dict[str, Any]:
        actor = self._actor()
        try:
            _check_role(role)
            if entity_id == actor.entity_id:
                raise SeparationOfDuties("an administrator may not change their own role grants")
            current = self._grants(entity_id)
            if role in current:
                raise Conflict(f"{entity_id} already holds {role}")
            clash = role_conflicts(current, role)
            if clash:
                raise SeparationOfDuties(
                    f"separation of duties: {entity_id} holds {', '.join(clash)}, "
                    f"which may not be combined with {role}"
                )
        except CkmsError as exc:
            self._refuse("entity.grant", f"{entity_id}:{role}", exc)
        new = sorted({*current, role})
        row = event(actor, "entity.grant", entity_id, "success", {"role": role, "roles": new})

        def unit(conn: Connection) -> None:
            # chain head first: the lock order every writer keeps (see the first unit above)
            append_audit(conn, [row])
            conn.execute(
                entity_roles.insert().values(
                    entity_id=entity_id, role=role, granted_at=utcnow(), granted_by=actor.entity_id
                )
            )
            conn.execute(
                update(entities).where(entities.c.entity_id == entity_id).values(role=role_label(new))
            )
            bump_entity_generation(conn)

        self.change(unit, [row])
        return {"entity_id": entity_id, "roles": new}

    def revoke_role(self, entity_id: str, role: str) -> dict[str, Any]:
        actor = self._actor()
        try:
            if entity_id == actor.entity_id:
                raise SeparationOfDuties("an administrator may not change their own role grants")
            current = self._grants(entity_id)
            if role not in current:
                raise NotFound(f"{entity_id} does not hold {role}")
        except CkmsError as exc:
            self._refuse("entity.revoke-role", f"{entity_id}:{role}", exc)
        new = sorted(set(current) - {role})
        row = event(actor, "entity.revoke-role", entity_id, "success", {"role": role, "roles": new})

        def unit(conn: Connection) -> None:
            # chain head first: the lock order every writer keeps (see the first unit above)
            append_audit(conn, [row])
            conn.execute(
                delete(entity_roles).where(entity_roles.c.entity_id == entity_id, entity_roles.c.role == role)
            )
            conn.execute(
                update(entities).where(entities.c.entity_id == entity_id).values(role=role_label(new))
            )
            bump_entity_generation(conn)

        self.change(unit, [row])
        return {"entity_id": entity_id, "roles": new}

    def disable(self, entity_id: str, reason: str = "privilegeWithdrawn") -> dict[str, Any]:
        """Disable the entity and revoke its credential, effective in every worker at once."""
        actor = self._actor()
        try:
            if entity_id == actor.entity_id:
                raise SeparationOfDuties("an administrator may not disable themselves")
            with self.reader.connect() as conn:
                row = conn.execute(select(entities).where(entities.c.entity_id == entity_id)).first()
            if row is None:
                raise NotFound(f"no entity {entity_id}")
            if row.status != "active":
                raise Conflict(f"entity {entity_id} is already {row.status}")
        except CkmsError as exc:
            self._refuse("entity.disable", entity_id, exc)
        serial = row.cert_serial
        now = utcnow()
        rows = [
            event(actor, "entity.disable", entity_id, "success", {"reason": reason, "cert_serial": serial})
        ]
        if serial:
            rows.append(
                event(actor, "certificate.revoke", serial, "success", {"reason": reason, "entity": entity_id})
            )

        def unit(conn: Connection) -> None:
            # chain head first: the lock order every writer keeps (see the first unit above)
            append_audit(conn, rows)
            conn.execute(update(entities).where(entities.c.entity_id == entity_id).values(status="disabled"))
            if serial:
                status = conn.execute(
                    select(certificates.c.status).where(certificates.c.serial == serial)
                ).scalar()
                if status == "valid":
                    conn.execute(
                        update(certificates).where(certificates.c.serial == serial).values(status="revoked")
                    )
                    conn.execute(
                        revocations.insert().values(
                            serial=serial, reason=reason, revoked_at=now, revoked_by=actor.entity_id
                        )
                    )
            bump_entity_generation(conn)

        self.change(unit, rows)
        return {"entity_id": entity_id, "status": "disabled", "revoked_serial": serial}

    def set_password(self, entity_id: str, password: str) -> None:
        actor = self._actor()
        try:
            password_hash = hash_password(password)
            if entity_id != actor.entity_id and not actor.allows("entity.manage"):
                raise NotAuthorized("only an administrator sets another entity's password")
            self._grants(entity_id)  # exists?
        except CkmsError as exc:
            self._refuse("entity.password", entity_id, exc)
        row = event(actor, "entity.password", entity_id, "success", {})

        def unit(conn: Connection) -> None:
            append_audit(conn, [row])  # chain head first: the lock order every writer keeps
            conn.execute(
                update(entities).where(entities.c.entity_id == entity_id).values(password_hash=password_hash)
            )

        self.change(unit, [row])

    def list_entities(self) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            grants: dict[str, list[str]] = {}
            for g in conn.execute(select(entity_roles).order_by(entity_roles.c.role)):
                grants.setdefault(g.entity_id, []).append(g.role)
            return [
                {
                    "entity_id": r.entity_id,
                    "roles": grants.get(r.entity_id, []),
                    "status": r.status,
                    "cert_serial": r.cert_serial,
                    "password_set": bool(r.password_hash),
                    "created_at": r.created_at.isoformat(),
                }
                for r in conn.execute(select(entities).order_by(entities.c.entity_id))
            ]

    def _grants(self, entity_id: str) -> list[str]:
        with self.reader.connect() as conn:
            if (
                conn.execute(select(entities.c.entity_id).where(entities.c.entity_id == entity_id)).first()
                is None
            ):
                raise NotFound(f"no entity {entity_id}")
            return [
                r.role
                for r in conn.execute(
                    select(entity_roles.c.role).where(entity_roles.c.entity_id == entity_id)
                )
            ]

    # --- ACL -------------------------------------------------------------------------------------
    def acl_list(self) -> list[dict[str, str]]:
        with self.reader.connect() as conn:
            return [{"role": r, "operation": op, "resource": res} for r, op, res in sorted(load_acl(conn))]

    def acl_change(self, grant: bool, role: str, operation: str, resource: str) -> dict[str, str]:
        actor = self._actor()
        action = "acl.grant" if grant else "acl.revoke"
        target = f"{role}:{operation}:{resource}"
        try:
            _check_role(role)
            if operation not in OPERATIONS:
                raise CkmsError(
                    f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}", code="bad_request"
                )
            if resource != "*" and not re.fullmatch(r"(profile|key):[A-Za-z0-9._-]{1,64}", resource):
                raise CkmsError("resource is '*', 'profile:NAME' or 'key:LABEL'", code="bad_request")
            if role in actor.roles and operation in ("acl.manage", "entity.manage"):
                raise SeparationOfDuties(
                    "an administrator may not change the ACL entries of their own role's "
                    "administration rights"
                )
            present = (role, operation, resource) in set(self._acl())
            if grant == present:
                raise Conflict(f"{target} is {'already' if present else 'not'} in the ACL")
        except CkmsError as exc:
            self._refuse(action, target, exc)
        row = event(
            actor, action, target, "success", {"role": role, "operation": operation, "resource": resource}
        )

        def unit(conn: Connection) -> None:
            # chain head first: the lock order every writer keeps (see the first unit above)
            append_audit(conn, [row])
            if grant:
                conn.execute(
                    role_permissions.insert().values(role=role, operation=operation, resource=resource)
                )
            else:
                conn.execute(
                    delete(role_permissions).where(
                        role_permissions.c.role == role,
                        role_permissions.c.operation == operation,
                        role_permissions.c.resource == resource,
                    )
                )
            bump_entity_generation(conn)

        self.change(unit, [row])
        return {"role": role, "operation": operation, "resource": resource, "change": action}

    def _acl(self) -> frozenset[tuple[str, str, str]]:
        with self.reader.connect() as conn:
            return load_acl(conn)


def _check_entity_id(entity_id: str) -> None:
    if not ENTITY_ID.fullmatch(entity_id):
        raise CkmsError(f"entity ID {entity_id!r} must match {ENTITY_ID.pattern}", code="bad_request")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise CkmsError(f"unknown role {role!r}; one of {', '.join(ROLES)}", code="bad_request")
