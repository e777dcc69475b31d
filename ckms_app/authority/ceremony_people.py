"""The people ``ckms ca init`` registers without keys: ``--person ID:ROLE``.

The ceremony itself (several witnesses, actor ``ceremony``) is the approval, so these entities need no
second person. Each is created ``pending``, with its role, no key, no certificate and no password, and
gets a one-time enrolment code. The codes are returned to the caller once (the ``--json`` summary) and
only their hashes reach the database; no file ever holds one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.engine import Connection

from ckms_app.audit.record import event
from ckms_app.authority import enrolment, people_changes
from ckms_app.authority.credentials import CEREMONY
from ckms_app.authority.people_changes import check_entity_id, check_role
from ckms_app.errors import CkmsError
from ckms_app.store.chain import append_audit
from ckms_app.store.schema import utcnow
from ckms_app.store.writer import GroupCommitWriter


@dataclass(frozen=True)
class InitPeople:
    """Who the ceremony registers. ``demo``: one demo identity per role with key, certificate and
    password in the home (a lab only). ``persons``: (ID, role) pairs registered without key or
    certificate, each with a one-time enrolment code."""

    demo: bool = False
    persons: tuple[tuple[str, str], ...] = ()


def parse_person(value: str) -> tuple[str, str]:
    """``ID:ROLE`` from the command line."""
    entity_id, sep, role = value.partition(":")
    if not sep:
        raise CkmsError(f"--person {value!r}: give ID:ROLE, e.g. admin-1:administrator", code="bad_request")
    return entity_id, role


def check_persons(persons: tuple[tuple[str, str], ...]) -> None:
    """Refuse bad IDs, unknown roles and one ID twice before the ceremony touches anything (one
    role per person keeps the four roles pairwise exclusive)."""
    seen: set[str] = set()
    for entity_id, role in persons:
        check_entity_id(entity_id)
        check_role(role)
        if entity_id in seen or entity_id.startswith("demo-"):
            raise CkmsError(f"--person {entity_id}: given twice or a demo name", code="bad_request")
        seen.add(entity_id)


def register_persons(
    writer: GroupCommitWriter, persons: tuple[tuple[str, str], ...]
) -> dict[str, dict[str, str]]:
    """Create each person pending with a fresh code, one transaction each with its audit records."""
    codes: dict[str, dict[str, str]] = {}
    for entity_id, role in persons:
        code, now = enrolment.new_code(), utcnow()
        rows = [
            event(
                CEREMONY,
                "entity.create",
                entity_id,
                "success",
                {"roles": [role], "status": "pending", "method": "ceremony"},
            ),
            event(
                CEREMONY,
                "entity.enrol-code",
                entity_id,
                "success",
                {"ttl_hours": enrolment.DEFAULT_TTL_HOURS, "method": "ceremony"},
            ),
        ]

        expires = writer.run(
            partial(_register, entity_id=entity_id, role=role, code=code, now=now, rows=rows)
        )
        codes[entity_id] = {"code": code, "expires": expires.isoformat()}
    return codes


def _register(
    conn: Connection, *, entity_id: str, role: str, code: str, now: dt.datetime, rows: list[dict[str, Any]]
) -> dt.datetime:
    append_audit(conn, rows)  # chain head first: the lock order every writer keeps
    people_changes.insert_pending(conn, entity_id, [role], "ceremony", now)
    return enrolment.store_code(conn, entity_id, code, "ceremony", enrolment.DEFAULT_TTL_HOURS, now)
