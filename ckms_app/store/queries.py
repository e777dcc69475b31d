"""Durable state of the CA: certificates, revocations, CRLs, entities and the audit trail.

SQLAlchemy Core over SQLite (WAL, ``synchronous=FULL``) by default or PostgreSQL for several CA
nodes. Writes go through :class:`GroupCommitWriter`: the daemon hands it one *unit of work* per
request (for an issuance: the certificate row and its audit record), and the writer commits
many units in one durable transaction, each inside its own savepoint so one failing unit (say, a
duplicate request) does not take the others with it. A client only gets its certificate after
the commit, so a killed process never loses a certificate a client holds.
"""

from __future__ import annotations

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ckms_app.store.schema import (
    crls,
    security_state,
)


def bump_entity_generation(conn: Connection) -> None:
    """Tell every worker (every node) that cached principals are stale: part of the change's transaction."""
    conn.execute(update(security_state).where(security_state.c.name == "entity_generation")
                 .values(value=security_state.c.value + 1))


def entity_generation(conn: Connection) -> int:
    return int(conn.execute(select(security_state.c.value)
                            .where(security_state.c.name == "entity_generation")).scalar() or 0)


def next_crl_number(conn: Connection) -> int:
    current = conn.execute(select(func.max(crls.c.crl_number))).scalar()
    return 1 if current is None else int(current) + 1
