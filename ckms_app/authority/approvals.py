"""Two-person changes: one person proposes a change to people, roles or the ACL, a second approves it.

``ckms entity add/grant/revoke`` and ``ckms acl grant/revoke`` store a proposal (one transaction with
its ``change.propose`` record). Nothing changes until a different person holding ``change.approve`` on
the change's kind (by default the authority) runs ``ckms change approve N``: that one transaction
writes the applied change's audit record (naming proposer, approver and how each authenticated),
marks the proposal approved and applies it. ``ckms change reject N`` closes it unapplied.

Refused, audited and alerted: approving one's own proposal (:class:`~ckms_app.errors.SelfApproval`),
proposing or approving a grant to a role the proposer or approver holds
(:class:`~ckms_app.errors.SelfGrant`), an approver without ``change.approve``, and every check of
:mod:`ckms_app.authority.people_changes`, which runs again at approval time.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.record import event
from ckms_app.authority import enrolment, people_changes
from ckms_app.authority.admin_session import AdminSession
from ckms_app.authority.rbac import Principal
from ckms_app.errors import CkmsError, Conflict, NotAuthorized, NotFound, SelfApproval, SeparationOfDuties
from ckms_app.store.chain import append_audit
from ckms_app.store.queries import bump_entity_generation
from ckms_app.store.schema import change_proposals, entities, utcnow

# Rights an actor may not withdraw from their own role: that would lock the CA's administration out.
_OWN_RIGHTS = ("acl.manage", "entity.manage", "change.approve")


class Approvals(AdminSession):
    """Propose, approve, reject and list changes (``ckms change …``)."""

    def propose(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        actor = self._actor()
        target = people_changes.target_of(kind, payload)
        try:
            self._check_for(actor, kind, payload)
        except CkmsError as exc:
            self._refuse(kind, target, exc)
        method, now = self.method, utcnow()

        def unit(conn: Connection) -> dict[str, Any]:
            # A new row nobody else locks, then the chain head (the lock order every writer keeps).
            inserted = conn.execute(
                change_proposals.insert().values(
                    kind=kind,
                    payload=json.dumps(payload, sort_keys=True),
                    proposer=actor.entity_id,
                    proposer_method=method,
                    created_at=now,
                    status="proposed",
                )
            ).inserted_primary_key
            change_id = int(inserted[0]) if inserted else 0
            row = event(
                actor,
                "change.propose",
                f"change:{change_id}",
                "success",
                {
                    "kind": kind,
                    "target": target,
                    "payload": payload,
                    "proposer": actor.entity_id,
                    "proposer_method": method,
                },
            )
            append_audit(conn, [row])
            return {"change": int(change_id), "row": row}

        done = self.writer.run(unit)
        self.alert(done["row"])
        return {"change": done["change"], "status": "proposed", "kind": kind, "proposer": actor.entity_id}

    def approve(self, change_id: int) -> dict[str, Any]:
        approver = self._actor()
        try:
            proposal = self._proposal(change_id)
            kind, payload = proposal.kind, json.loads(proposal.payload)
            if proposal.proposer == approver.entity_id:
                raise SelfApproval(
                    f"{approver.entity_id} proposed change {change_id} and may not approve it too"
                )
            approver.require("change.approve", people_changes.KINDS[kind])
            facts = self._check_for(approver, kind, payload)
            self._check_for(self._principal_of(proposal.proposer), kind, payload)
        except CkmsError as exc:
            self._refuse("change.approve", f"change:{change_id}", exc)
        now = utcnow()
        # A two-person enrolment code: the proposer holds the first half, the approver gets the second.
        second = enrolment.new_half() if kind == "entity.code" else None
        who = {
            "change": change_id,
            "proposer": proposal.proposer,
            "proposer_method": proposal.proposer_method,
            "approver": approver.entity_id,
            "approver_method": self.method,
        }
        rows = [
            event(
                approver,
                kind,
                people_changes.target_of(kind, payload),
                "success",
                {**payload, **facts, **who},
            )
        ]
        if facts.get("cert_serial"):
            reason = payload.get("reason") or "privilegeWithdrawn"
            rows.append(
                event(
                    approver, "certificate.revoke", facts["cert_serial"], "success", {"reason": reason, **who}
                )
            )

        def unit(conn: Connection) -> None:
            append_audit(conn, rows)  # chain head first: the lock order every writer keeps
            decided = conn.execute(
                update(change_proposals)
                .where(change_proposals.c.id == change_id, change_proposals.c.status == "proposed")
                .values(
                    status="approved",
                    approver=approver.entity_id,
                    approver_method=self.method,
                    decided_at=now,
                )
            )
            if decided.rowcount != 1:
                raise Conflict(f"change {change_id} was decided meanwhile")
            people_changes.apply(conn, kind, payload, approver.entity_id, now)
            if second is not None:
                enrolment.store_code_hash(
                    conn,
                    str(payload["entity_id"]),
                    enrolment.split_code_hash(str(payload["first_half_sha256"]), second),
                    approver.entity_id,
                    float(payload["ttl_hours"]),
                    now,
                )
            bump_entity_generation(conn)

        self.change(unit, rows)
        done = {"change": change_id, "status": "approved", "kind": kind, **who}
        if second is not None:
            done["code_part"] = second
            done["next"] = (
                "give this second half to the person; the proposer gives the first; "
                f"they enrol with FIRST{enrolment.SPLIT}SECOND"
            )
        return done

    def reject(self, change_id: int, reason: str) -> dict[str, Any]:
        actor = self._actor()
        try:
            proposal = self._proposal(change_id)
            if proposal.proposer != actor.entity_id:
                actor.require("change.approve", people_changes.KINDS[proposal.kind])
        except CkmsError as exc:
            self._refuse("change.reject", f"change:{change_id}", exc)
        now = utcnow()
        detail = {
            "kind": proposal.kind,
            "proposer": proposal.proposer,
            "reason": reason,
            "rejected_by": actor.entity_id,
            "method": self.method,
        }
        row = event(actor, "change.reject", f"change:{change_id}", "success", detail)

        def unit(conn: Connection) -> None:
            append_audit(conn, [row])
            decided = conn.execute(
                update(change_proposals)
                .where(change_proposals.c.id == change_id, change_proposals.c.status == "proposed")
                .values(
                    status="rejected",
                    approver=actor.entity_id,
                    approver_method=self.method,
                    decided_at=now,
                    reason=reason,
                )
            )
            if decided.rowcount != 1:
                raise Conflict(f"change {change_id} was decided meanwhile")

        self.change(unit, [row])
        return {"change": change_id, "status": "rejected", "kind": proposal.kind}

    def list_changes(self) -> list[dict[str, Any]]:
        actor = self._actor()
        if not any(actor.allows(op) for op in ("change.approve", "entity.manage", "acl.manage")):
            self._refuse_plain(
                "change.list", NotAuthorized(f"{actor.entity_id} (role {actor.role}) may not list changes")
            )
        with self.reader.connect() as conn:
            return [
                {
                    "change": r.id,
                    "kind": r.kind,
                    "payload": json.loads(r.payload),
                    "proposer": r.proposer,
                    "proposer_method": r.proposer_method,
                    "created_at": r.created_at.isoformat(),
                    "status": r.status,
                    "approver": r.approver,
                    "approver_method": r.approver_method,
                    "decided_at": r.decided_at.isoformat() if r.decided_at else None,
                    "reason": r.reason,
                }
                for r in conn.execute(select(change_proposals).order_by(change_proposals.c.id))
            ]

    # --- helpers ---------------------------------------------------------------------------------
    def _check_for(self, person: Principal, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Every check of the change, seen from ``person`` (proposer or approver): its own checks
        (separation of duties first), then no self-grant."""
        with self.reader.connect() as conn:
            facts = people_changes.check(conn, kind, payload, person.entity_id)
        people_changes.refuse_self_grant(kind, payload, person.entity_id, person.roles)
        if kind == "acl.revoke" and payload["role"] in person.roles and payload["operation"] in _OWN_RIGHTS:
            raise SeparationOfDuties(
                f"{person.entity_id} may not withdraw their own role's {payload['operation']}"
            )
        return facts

    def _proposal(self, change_id: int) -> Any:
        with self.reader.connect() as conn:
            row = conn.execute(select(change_proposals).where(change_proposals.c.id == change_id)).first()
        if row is None:
            raise NotFound(f"no change {change_id}")
        if row.status != "proposed":
            raise Conflict(f"change {change_id} is already {row.status}")
        return row

    def _principal_of(self, entity_id: str) -> Principal:
        """The proposer as they are now: their current roles decide the self-grant rule at approval."""
        with self.reader.connect() as conn:
            role = conn.execute(select(entities.c.role).where(entities.c.entity_id == entity_id)).scalar()
        return Principal(entity_id, role or "none", frozenset())

    def _refuse_plain(self, action: str, exc: CkmsError) -> NoReturn:
        self._refuse(action, "-", exc)
