"""Small reads and counter updates shared by the layers above, over a caller's :class:`Connection`.

The daemon's handlers ask the database through these functions and never write SQL themselves: the
certificate being renewed, one certificate and its revocation by serial, the newest CRL of a kind, and
the health probe. Each runs in the caller's connection (and transaction), so a handler that needs
several answers asks them in one connection, as before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import desc, func, select, text, update
from sqlalchemy.engine import Connection, Row

from ckms_app.store.schema import certificates, crls, revocations, security_state

# Which stored CRL kinds answer a request for ``full``, ``delta`` or ``base``: the newest complete CRL
# is either a full one or the base of a delta series.
_CRL_KINDS = {"full": ("full", "base"), "delta": ("delta",), "base": ("base",)}


def bump_entity_generation(conn: Connection) -> None:
    """Tell every worker (every node) that cached principals are stale: part of the change's transaction."""
    conn.execute(
        update(security_state)
        .where(security_state.c.name == "entity_generation")
        .values(value=security_state.c.value + 1)
    )


def entity_generation(conn: Connection) -> int:
    return int(
        conn.execute(
            select(security_state.c.value).where(security_state.c.name == "entity_generation")
        ).scalar()
        or 0
    )


def next_crl_number(conn: Connection) -> int:
    current = conn.execute(select(func.max(crls.c.crl_number))).scalar()
    return 1 if current is None else int(current) + 1


def current_certificate_der(conn: Connection, subject: str) -> bytes | None:
    """The newest valid end-entity certificate with this subject (RFC 4514 string): what a re-enrolment renews."""
    der = conn.execute(
        select(certificates.c.der)
        .where(
            certificates.c.subject == subject,
            certificates.c.status == "valid",
            certificates.c.kind == "end-entity",
        )
        .order_by(desc(certificates.c.issued_at))
        .limit(1)
    ).scalar()
    return None if der is None else bytes(der)


def certificate_by_serial(conn: Connection, serial: str) -> Row[Any] | None:
    """The ``certificates`` row of a (normalised, lower-case hex) serial, or None."""
    return conn.execute(select(certificates).where(certificates.c.serial == serial)).first()


def revocation_by_serial(conn: Connection, serial: str) -> Row[Any] | None:
    """The ``revocations`` row of a serial, or None while the certificate is not revoked."""
    return conn.execute(select(revocations).where(revocations.c.serial == serial)).first()


def latest_crl(conn: Connection, kinds: tuple[str, ...], issuer_key_id: str | None = None) -> Row[Any] | None:
    """The ``crls`` row with the highest CRL number among ``kinds`` (``full``, ``base``, ``delta``), of one
    signing key when ``issuer_key_id`` is given (after a rollover several keys sign CRLs). Without its DER
    (a 100,000-entry CRL is ~4 MB, and publishers ask every second): :func:`crl_der` reads that."""
    query = select(*(c for c in crls.c if c.name != "der")).where(crls.c.kind.in_(kinds))
    if issuer_key_id is not None:
        query = query.where(crls.c.issuer_key_id == issuer_key_id)
    return conn.execute(query.order_by(crls.c.crl_number.desc()).limit(1)).first()


def latest_crl_number(conn: Connection, which: str, issuer_key_id: str | None = None) -> int | None:
    """The number of the newest published CRL of ``which`` (``full``, ``delta``, ``base``), of one signing key
    when ``issuer_key_id`` is given: an index read, so a reader can keep the CRL's bytes until a newer one is
    published."""
    query = select(crls.c.crl_number).where(crls.c.kind.in_(_CRL_KINDS[which]))
    if issuer_key_id is not None:
        query = query.where(crls.c.issuer_key_id == issuer_key_id)
    number = conn.execute(query.order_by(crls.c.crl_number.desc()).limit(1)).scalar()
    return None if number is None else int(number)


def crl_der(conn: Connection, number: int) -> bytes:
    """The DER of the published CRL with this number."""
    return bytes(conn.execute(select(crls.c.der).where(crls.c.crl_number == number)).scalar_one())


def ping(conn: Connection) -> None:
    """A round trip to the database (the health check); raises whatever the driver raises."""
    conn.execute(text("SELECT 1"))
