"""The administrator's CLI session on a CA home: open it, authenticate the acting individual, record and
alert every change and refusal (A.27–A.30, E.03–E.05, F.15). Changes themselves: :mod:`ckms_app.authority.entities`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.engine import Engine

from ckms_app.audit.alerts import is_alerting, send_alert
from ckms_app.audit.record import named, record_now
from ckms_app.authority.passwords import verify_password
from ckms_app.authority.rbac import (
    Principal,
    certificate_fingerprint,
    load_acl,
    permissions_for,
)
from ckms_app.config import Config
from ckms_app.errors import CkmsError, NotAuthenticated, NotAuthorized
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import entities
from ckms_app.store.writer import GroupCommitWriter


@dataclass
class AdminSession:
    """An open CA home for one CLI action: config, reader, writer and the authenticated actor.

    The acting individual is authenticated twice (credential and their own password; the token PIN
    only sets a first password) and checked against the ACL; every refusal is recorded and alerted."""

    config: Config
    reader: Engine
    writer: GroupCommitWriter
    actor: Principal | None = None
    method: str = "none"  # how the actor authenticated: password | token-pin (audited with every change)

    @classmethod
    def open(cls, config: Config) -> Self:
        reader = open_engine(config.database_url)
        migrate(reader)
        return cls(config, reader, GroupCommitWriter(open_engine(config.database_url, writer=True)))

    def close(self) -> None:
        self.writer.close()
        self.reader.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- audit + alert ---------------------------------------------------------------------------
    def record(
        self,
        action: str,
        target: str,
        outcome: str,
        detail: dict[str, Any] | None = None,
        *,
        actor: Principal | None = None,
        entity_id: str | None = None,
        role: str | None = None,
    ) -> None:
        """Write one audit record on its own (refusals; changes write theirs inside their unit)."""
        who = actor or self.actor
        acting = named(
            entity_id or (who.entity_id if who else "unauthenticated"), role or (who.role if who else "none")
        )
        row = record_now(self.writer, acting, action, target, outcome, detail)
        self.alert(row)

    def alert(self, row: dict[str, Any]) -> list[Any]:
        if not (is_alerting(row["action"]) or row["action"].startswith("change.")):
            return []
        event = {k: row[k] for k in ("entity_id", "role", "action", "target", "outcome")}
        event["at"] = row["at"].isoformat()
        event["detail"] = row["detail"]
        return send_alert(self.config.alerts, event)

    def change(self, unit: Any, rows: list[dict[str, Any]]) -> Any:
        """Run a change unit that appends ``rows`` to the audit chain; alert once it is committed."""
        result = self.writer.run(unit)
        for row in rows:
            self.alert(row)
        return result

    # --- authentication --------------------------------------------------------------------------
    def authenticate(
        self,
        *,
        entity_id: str | None,
        cert_path: Path | None,
        password: str | None,
        operation: str | None,
    ) -> Principal:
        """The person's credential (``--as`` or ``--cert``) and their own password, then the ACL.

        There is no acting as a role and no other secret that stands in for a person's password (the
        token PIN only sets the first password of an entity that has none: :meth:`authenticate_first_password`).
        Every refusal is audited under the entity's ID."""
        row, acl = self._lookup(entity_id, cert_path, operation)
        secret_ok = password is not None and verify_password(password, row.password_hash)
        if row.status != "active" or not secret_ok:
            reason = (
                f"entity is {row.status}"
                if row.status != "active"
                else "no password set (the token PIN sets a first one: ckms entity passwd)"
                if not row.password_hash
                else "wrong password"
            )
            self._deny(row, operation, reason)
        principal = Principal(row.entity_id, row.role, permissions_for(row.role, acl))
        if operation is not None:
            try:
                principal.require(operation)
            except NotAuthorized as exc:
                self.record(operation, "-", "denied", {"reason": str(exc)}, actor=principal)
                raise NotAuthorized(
                    f"{row.entity_id} (role {row.role}) may not perform {operation}"
                ) from None
        self.actor, self.method = principal, "password"
        return principal

    def authenticate_first_password(self, entity_id: str, pin_ok: bool) -> Principal:
        """The token PIN, once, for an entity that has no password yet: it may set that first password
        and nothing else. An entity with a password is refused (the PIN never acts as a person)."""
        row, acl = self._lookup(entity_id, None, "entity.password")
        if row.password_hash:
            self._deny(row, "entity.password", "the entity has a password; the token PIN cannot replace it")
        if row.status != "active" or not pin_ok:
            self._deny(row, "entity.password", f"entity is {row.status}" if pin_ok else "wrong token PIN")
        self.actor = Principal(row.entity_id, row.role, permissions_for(row.role, acl))
        self.method = "token-pin"
        return self.actor

    def _lookup(
        self, entity_id: str | None, cert_path: Path | None, operation: str | None
    ) -> tuple[Any, Any]:
        """The entity row named by ``--as`` or by its certificate, and the ACL; unknown ones are audited."""
        with self.reader.connect() as conn:
            query = select(entities)
            if entity_id is not None:
                query = query.where(entities.c.entity_id == entity_id)
            elif cert_path is not None:
                der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
                    serialization.Encoding.DER
                )
                query = query.where(entities.c.cert_sha256 == certificate_fingerprint(der))
            else:
                raise NotAuthenticated("say who you are: --as ENTITY or --cert FILE")
            row = conn.execute(query).first()
            acl = load_acl(conn)
        if row is None:
            self.record(
                "auth.deny",
                operation or "-",
                "denied",
                {"reason": "unknown entity or credential", "claimed": entity_id or str(cert_path)},
            )
            raise NotAuthenticated("no such entity for these credentials")
        return row, acl

    def _deny(self, row: Any, operation: str | None, reason: str) -> NoReturn:
        self.record(
            "auth.deny",
            operation or "-",
            "denied",
            {"reason": reason},
            entity_id=row.entity_id,
            role=row.role,
        )
        raise NotAuthenticated(f"authentication of {row.entity_id} failed ({reason})")

    def _actor(self) -> Principal:
        if self.actor is None:
            raise NotAuthenticated("not authenticated")
        return self.actor

    def _refuse(self, action: str, target: str, exc: CkmsError) -> NoReturn:
        self.record(action, target, "denied", {"code": exc.code, "reason": str(exc), "method": self.method})
        raise exc
