"""The one way ckms puts an event on the audit trail (A.06, F.12–F.14).

Every record names who acted (the individual's entity ID and the role they acted in), what they did,
to what, and how it ended (``success``, ``denied`` or ``error``), with a small JSON detail. :func:`event`
builds the record; :func:`record` and :func:`record_now` write one on its own through the durable
group-commit writer. A record that must commit together with other rows (a certificate and its
issuance record, a revocation and its record) is built with :func:`event` and handed to the same unit
of work, which appends it to the hash chain (:func:`ckms_app.store.chain.append_audit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ckms_app.errors import CkmsError
from ckms_app.store.chain import audit_row
from ckms_app.store.schema import audit_events
from ckms_app.store.writer import GroupCommitWriter, Inserts


class Actor(Protocol):
    """Whoever acted: an authenticated individual (``authority.rbac.Principal``) or the system."""

    @property
    def entity_id(self) -> str: ...

    @property
    def role(self) -> str: ...


class _Named:
    def __init__(self, entity_id: str, role: str) -> None:
        self.entity_id = entity_id
        self.role = role


def named(entity_id: str, role: str) -> Actor:
    """An actor that is not a resolved principal: the ceremony, the daemon itself, an unknown peer."""
    return _Named(entity_id, role)


SYSTEM = named("ckms", "system")  # the daemon itself: start/stop, seals, configuration changes, error state


def event(
    who: Actor, action: str, target: str, outcome: str, detail: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One audit record, ready for a unit of work."""
    return audit_row(
        entity_id=who.entity_id,
        role=who.role,
        action=action,
        target=target,
        outcome=outcome,
        detail=dict(detail or {}),
    )


def refusal(exc: CkmsError, **extra: Any) -> dict[str, Any]:
    """The detail of a refused or failed action: its stable code and the sentence the client got."""
    return {"code": exc.code, "reason": str(exc), **extra}


def outcome_of(exc: CkmsError) -> str:
    """``denied`` for a refusal of the request, ``error`` for a failure on the CA's side."""
    return "denied" if exc.http_status < 500 else "error"


async def record(
    writer: GroupCommitWriter,
    who: Actor,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Write one record durably (the daemon's workers)."""
    await writer.submit(Inserts(((audit_events, event(who, action, target, outcome, detail)),)))


def record_now(
    writer: GroupCommitWriter,
    who: Actor,
    action: str,
    target: str,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one record durably from synchronous code (the CLI); returns the record."""
    row = event(who, action, target, outcome, detail)
    writer.run(Inserts(((audit_events, row),)))
    return row
