"""One-time enrolment codes: how a person gets their identity certificate without anyone else ever
holding their private key.

An entity is registered without a key (``ckms ca init --person``, or an approved ``entity add``) and
given a one-time code: by the ceremony, or later in two halves by two people (``ckms entity enrol-code``
proposes and shows the first half to the proposer; the approval shows the second half to the approver), so
no single administrator or authority ever holds a whole code and can enrol as someone else. Codes are
shown once; only their SHA-256 is stored.
The person makes their key and CSR on their own machine and sends the CSR with the code, over EST
(``/.well-known/est/identity/simpleenroll``, HTTP Basic ``ID:CODE``) or locally (``ckms entity enrol``).
:class:`EnrolmentDesk` checks the code (unknown, wrong, used, expired and locked codes are refused
alike; the fifth wrong code locks it), checks the CSR, has the signer issue the identity certificate
for the CSR's key, and activates the entity. The code is consumed only by a successful enrolment.
Every enrolment and every refusal is one transaction with its audit record, and raises an alert.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ckms_app.audit.alerts import is_alerting, send_alert
from ckms_app.audit.record import Actor, event, named
from ckms_app.authority.credentials import identity_builder
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.rbac import certificate_fingerprint
from ckms_app.authority.signer import Signer, open_signer
from ckms_app.config import Config
from ckms_app.errors import CkmsError, EnrolmentRefused
from ckms_app.hsm.token import HsmEcPrivateKey, Token
from ckms_app.store.chain import append_audit
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.queries import bump_entity_generation
from ckms_app.store.schema import audit_events, certificates, enrolment_codes, entities, revocations, utcnow
from ckms_app.store.writer import GroupCommitWriter, Inserts
from ckms_app.x509.csr_policy import check_csr

MAX_ATTEMPTS = 5
DEFAULT_TTL_HOURS = 72
METHOD = "enrolment-code"
# What a refused client is told, whatever the reason (the audit record has the reason).
REFUSED = "enrolment refused: unknown entity, or a wrong, used, expired or locked code"


def new_code() -> str:
    """192 random bits, URL-safe: typed or pasted once, so no slow hash is needed to protect it."""
    return secrets.token_urlsafe(24)


# A two-person code is ``FIRST.SECOND`` (URL-safe base64 never contains the dot).
SPLIT = "."


def new_half() -> str:
    """One half of a two-person code: 128 random bits."""
    return secrets.token_urlsafe(16)


def half_digest(first: str) -> str:
    """What the proposal keeps of the first half: enough to check the whole code, not to rebuild it."""
    return hashlib.sha256(first.encode()).hexdigest()


def split_code_hash(first_digest: str, second: str) -> str:
    return "sha256x2$" + hashlib.sha256(f"{first_digest}{SPLIT}{second}".encode()).hexdigest()


def code_hash(code: str) -> str:
    if SPLIT in code:
        first, _, second = code.partition(SPLIT)
        return split_code_hash(half_digest(first), second)
    return "sha256$" + hashlib.sha256(code.encode()).hexdigest()


def store_code(
    conn: Connection, entity_id: str, code: str, issued_by: str, ttl_hours: float, now: dt.datetime
) -> dt.datetime:
    """Replace the entity's code by a fresh one (in the caller's transaction); returns its expiry."""
    return store_code_hash(conn, entity_id, code_hash(code), issued_by, ttl_hours, now)


def store_code_hash(
    conn: Connection, entity_id: str, hashed: str, issued_by: str, ttl_hours: float, now: dt.datetime
) -> dt.datetime:
    """Store an already hashed code (a two-person code is only ever whole in its holder's hands)."""
    expires = now + dt.timedelta(hours=ttl_hours)
    conn.execute(delete(enrolment_codes).where(enrolment_codes.c.entity_id == entity_id))
    conn.execute(
        enrolment_codes.insert().values(
            entity_id=entity_id,
            code_hash=hashed,
            issued_at=now,
            issued_by=issued_by,
            expires_at=expires,
            attempts=0,
            used_at=None,
        )
    )
    return expires


@dataclass(frozen=True)
class Enrolled:
    entity_id: str
    certificate: x509.Certificate
    cert_sha256: str
    password_set: bool


class EnrolmentDesk:
    """Checks a code and a CSR, has the signer issue the identity certificate, activates the entity."""

    def __init__(
        self, config: Config, signer: Signer, ca_cert: x509.Certificate, writer: GroupCommitWriter
    ) -> None:
        self._config = config
        self._signer = signer
        self._ca_cert = ca_cert
        self._writer = writer

    async def enrol(
        self, entity_id: str, code: str, csr_der: bytes, *, password_hash: str | None, via: str
    ) -> Enrolled:
        who = await self.claim(entity_id, code, via)
        return await self.complete(who, csr_der, password_hash=password_hash, via=via)

    async def claim(self, entity_id: str, code: str, via: str) -> Actor:
        """Check the code and hold it (used) for this request: the authentication, done before the
        request body is read or parsed. Returns the entity as it will be audited."""
        claim = await self._writer.submit(lambda conn: _claim(conn, entity_id, code, via))
        await self._alert(claim["row"])
        if claim["refused"]:
            raise EnrolmentRefused(REFUSED)
        return named(entity_id, claim["role"])

    async def release(self, who: Actor, exc: CkmsError, via: str) -> None:
        """The claimed request failed before the desk saw a CSR: the code stays usable, the refusal recorded."""
        row = await self._writer.submit(lambda conn: _release(conn, who, exc, via))
        await self._alert(row)

    async def complete(self, who: Actor, csr_der: bytes, *, password_hash: str | None, via: str) -> Enrolled:
        """Check the CSR of a claimed code, have the identity certificate signed, activate the entity."""
        entity_id = who.entity_id
        try:
            checked = check_csr(csr_der, self._config.profile("identity"), self._config.csr.max_bytes)
            builder = identity_builder(self._config, self._ca_cert, entity_id, checked.public_key)
            cert, der = await self._signer.certificate(builder, "identity certificate")
        except CkmsError as exc:
            await self.release(who, exc, via)
            raise
        cert_row = certificate_row(
            cert,
            der,
            kind="identity",
            profile="identity",
            requested_by=entity_id,
            csr_sha256=None,
            pubkey_sha256=checked.pubkey_sha256,
        )
        fingerprint = certificate_fingerprint(der)
        rows = [
            event(
                who,
                "certificate.issue",
                str(cert_row["serial"]),
                "success",
                {"kind": "identity", "subject": cert_row["subject"], "method": METHOD},
            ),
            event(
                who,
                "entity.enrol",
                entity_id,
                "success",
                {
                    "cert_serial": cert_row["serial"],
                    "method": METHOD,
                    "via": via,
                    "password_set": password_hash is not None,
                },
            ),
        ]

        def store(conn: Connection) -> None:
            append_audit(conn, rows)  # chain head first: the lock order every writer keeps
            conn.execute(certificates.insert(), cert_row)
            _supersede(conn, entity_id)
            values: dict[str, Any] = {
                "status": "active",
                "cert_sha256": fingerprint,
                "cert_serial": cert_row["serial"],
            }
            if password_hash is not None:
                values["password_hash"] = password_hash
            conn.execute(update(entities).where(entities.c.entity_id == entity_id).values(**values))
            bump_entity_generation(conn)

        await self._writer.submit(store)
        for row in rows:
            await self._alert(row)
        return Enrolled(entity_id, cert, fingerprint, password_hash is not None)

    async def record_refusal(self, who: Actor, target: str, exc: CkmsError, **extra: Any) -> None:
        """A request refused before the desk saw it (no ``ID:CODE``, a bad body): recorded and alerted."""
        detail = {"code": exc.code, "reason": str(exc), "method": METHOD, **extra}
        row = event(who, "entity.enrol", target, "denied", detail)
        await self._writer.submit(Inserts(((audit_events, row),)))
        await self._alert(row)

    async def _alert(self, row: dict[str, Any]) -> None:
        if is_alerting(row["action"]):
            await asyncio.to_thread(send_alert, self._config.alerts, alert_event(row))


def alert_event(row: dict[str, Any]) -> dict[str, Any]:
    """The alert for a committed audit record: who, what, to what, how it ended, when, the detail."""
    out = {k: row[k] for k in ("entity_id", "role", "action", "target", "outcome", "detail")}
    out["at"] = row["at"].isoformat()
    return out


def _claim(conn: Connection, entity_id: str, code: str, via: str) -> dict[str, Any]:
    """Check the code and mark it used (so no concurrent request can use it too), or count the wrong
    attempt; either way with its audit record, in one transaction."""
    now = utcnow()
    entity = conn.execute(
        select(entities.c.role, entities.c.status).where(entities.c.entity_id == entity_id)
    ).first()
    held = conn.execute(select(enrolment_codes).where(enrolment_codes.c.entity_id == entity_id)).first()
    reason = None
    if entity is None or held is None:
        reason = "unknown entity" if entity is None else "no enrolment code issued"
    elif entity.status == "disabled":
        reason = "entity is disabled"
    elif held.used_at is not None:
        reason = "code already used"
    elif held.attempts >= MAX_ATTEMPTS:
        reason = f"code locked after {MAX_ATTEMPTS} wrong attempts"
    elif held.expires_at <= now:
        reason = "code expired"
    elif not hmac.compare_digest(code_hash(code), held.code_hash):
        attempts = held.attempts + 1
        reason = "wrong code" + (" (now locked)" if attempts >= MAX_ATTEMPTS else "")
    who = named(entity_id, entity.role) if entity is not None else named("unauthenticated", "none")
    detail: dict[str, Any] = {"method": METHOD, "via": via}
    if reason is not None:
        detail.update(code=EnrolmentRefused.code, reason=reason, claimed=entity_id)
        row = event(who, "entity.enrol", entity_id, "denied", detail)
        append_audit(conn, [row])
        if reason.startswith("wrong code"):
            conn.execute(
                update(enrolment_codes)
                .where(enrolment_codes.c.entity_id == entity_id)
                .values(attempts=enrolment_codes.c.attempts + 1)
            )
        return {"refused": True, "row": row, "role": who.role}
    row = event(who, "entity.enrol-code.use", entity_id, "success", detail)
    append_audit(conn, [row])
    used = conn.execute(
        update(enrolment_codes)
        .where(enrolment_codes.c.entity_id == entity_id, enrolment_codes.c.used_at.is_(None))
        .values(used_at=now)
    )
    if used.rowcount != 1:
        raise EnrolmentRefused(REFUSED)
    return {"refused": False, "row": row, "role": who.role}


def _release(conn: Connection, who: Actor, exc: CkmsError, via: str) -> dict[str, Any]:
    """The CSR was refused or signing failed: the code stays usable, and the refusal is recorded."""
    row = event(
        who,
        "entity.enrol",
        who.entity_id,
        "denied" if exc.http_status < 500 else "error",
        {"method": METHOD, "via": via, "code": exc.code, "reason": str(exc)},
    )
    append_audit(conn, [row])
    conn.execute(
        update(enrolment_codes).where(enrolment_codes.c.entity_id == who.entity_id).values(used_at=None)
    )
    return row


def _supersede(conn: Connection, entity_id: str) -> None:
    """A re-enrolment replaces the person's credential: the previous one is revoked (superseded)."""
    serial = conn.execute(select(entities.c.cert_serial).where(entities.c.entity_id == entity_id)).scalar()
    if not serial:
        return
    status = conn.execute(select(certificates.c.status).where(certificates.c.serial == serial)).scalar()
    if status == "valid":
        conn.execute(update(certificates).where(certificates.c.serial == serial).values(status="revoked"))
        conn.execute(
            revocations.insert().values(
                serial=serial, reason="superseded", revoked_at=utcnow(), revoked_by=entity_id
            )
        )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def enrol_locally(
    config: Config, entity_id: str, code: str, csr_der: bytes, password_hash: str | None
) -> Enrolled:
    """``ckms entity enrol`` on the CA host: the same desk as the daemon's, with a signer of its own."""
    engine = open_engine(config.database_url)
    migrate(engine)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())

    async def run(key: HsmEcPrivateKey) -> Enrolled:
        async with open_signer(config, key, writer) as signer:
            desk = EnrolmentDesk(config, signer, ca_cert, writer)
            return await desk.enrol(entity_id, code, csr_der, password_hash=password_hash, via="cli")

    try:
        with Token(config.token) as token:
            return asyncio.run(run(token.load_ec_key(config.ca_key_label)))
    finally:
        writer.close()
        engine.dispose()
