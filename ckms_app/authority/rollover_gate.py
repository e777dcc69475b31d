"""The rollover's destroy gate and ``ckms ca rollover status`` (issue 14 part 3; docs/ca-key-rollover.md).

Why a gate: after a rollover the old key still signs the CRLs of the certificates it issued. Destroyed too
early, relying parties would never learn of a revocation still to come, or of one that no CRL of that key
has carried yet. So a retired generation's key may be destroyed (``ckms hsm destroy-key``) only when every
certificate it issued has expired, or is revoked *and* listed on a full CRL that key signed after the
revocation (checked on the CRL itself: its signature under the generation's CA certificate and the serial in
it, not only a database row). The active and the next generation's keys are never destroyed this way.

What a key issued is told by ``certificates.issuer_key_id`` (the SKI of the generation's CA certificate),
never by the issuer name, which every generation shares. CA and link certificates (``kind = 'ca'``) do not
count: they are not revoked through this CA's CRLs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine

from ckms_app.authority.ca_tables import load_ca_cert, rerecord_manifest, revoke_key_grants, write_ca_tables
from ckms_app.config import CaGeneration, Config
from ckms_app.errors import CkmsError, CustodyError
from ckms_app.hsm.token import Token
from ckms_app.store.engine import open_engine
from ckms_app.store.queries import crl_der, latest_crl
from ckms_app.store.schema import certificates, revocations, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.key_ids import subject_key_id


def _issued_by(key_id: str | None, now: dt.datetime) -> Any:
    """Certificates (not CA or link certificates) the key issued that have not expired."""
    issuer = (
        certificates.c.issuer_key_id.is_(None) if key_id is None else certificates.c.issuer_key_id == key_id
    )
    return and_(issuer, certificates.c.kind != "ca", certificates.c.not_after > now)


def _counts(conn: Connection, key_id: str | None, now: dt.datetime) -> tuple[int, int]:
    """(valid and not revoked, revoked but not expired) of what one key issued."""
    revoked = certificates.c.serial.in_(select(revocations.c.serial))
    live = conn.execute(select(func.count()).where(_issued_by(key_id, now), ~revoked)).scalar_one()
    gone = conn.execute(select(func.count()).where(_issued_by(key_id, now), revoked)).scalar_one()
    return int(live), int(gone)


def _latest_crl(conn: Connection, key_id: str) -> Any:
    """The key's newest full CRL: kind ``full``, or ``base`` (a full CRL that also starts a delta base)."""
    return latest_crl(conn, ("full", "base"), key_id)


def _role(config: Config, gen: CaGeneration) -> str:
    if gen.generation == config.ca_generation:
        return "active"
    return "next" if config.ca_next is not None and gen.generation == config.ca_next.generation else "retired"


def status(config: Config, engine: Engine) -> list[dict[str, Any]]:
    """Per generation, oldest first: role, key, CA certificate, what it issued, its latest CRL, the gate."""
    out, now = [], utcnow()
    for gen in sorted(config.generations(), key=lambda g: g.generation):
        cert = load_ca_cert(gen.cert)
        key_id = subject_key_id(cert)
        with engine.connect() as conn:
            live, revoked = _counts(conn, key_id, now)
            crl = _latest_crl(conn, key_id)
        allowed, reason = may_destroy(config, engine, gen.key_label)
        out.append(
            {
                "generation": gen.generation,
                "role": _role(config, gen),
                "key_label": gen.key_label,
                "subject": cert.subject.rfc4514_string(),
                "subject_key_id": key_id,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "live_certificates": live,
                "revoked_unexpired": revoked,
                "latest_crl_number": crl.crl_number if crl else None,
                "latest_crl_this_update": crl.this_update.isoformat() if crl else None,
                "may_destroy": allowed,
                "destroy_reason": reason,
            }
        )
    return out


def may_destroy(config: Config, engine: Engine, label: str) -> tuple[bool, str]:
    """Whether the key ``label`` may be destroyed, and why (or why not); see the module docstring."""
    gen = next((g for g in config.generations() if g.key_label == label), None)
    if gen is None:
        return True, f"{label!r} is no key generation of this CA"
    role = _role(config, gen)
    if role != "retired":
        return False, (
            f"{label!r} is the {role} key generation {gen.generation}; only a retired generation's key is "
            "destroyed after a rollover"
        )
    cert, now = load_ca_cert(gen.cert), utcnow()
    key_id = subject_key_id(cert)
    with engine.connect() as conn:
        live, _ = _counts(conn, key_id, now)
        unknown, _ = _counts(conn, None, now)
        pending = conn.execute(
            select(certificates.c.serial, revocations.c.revoked_at)
            .join(revocations, revocations.c.serial == certificates.c.serial)
            .where(_issued_by(key_id, now))
        ).all()
        crl = _latest_crl(conn, key_id) if pending else None
    if live or unknown:
        return False, (
            f"generation {gen.generation} ({label!r}) still has {live} valid certificates"
            + (f" and {unknown} of unknown issuer" if unknown else "")
            + "; its key is destroyed once each has expired, or is revoked and on a CRL it signed"
        )
    if not pending:
        return True, f"every certificate generation {gen.generation} issued has expired"
    if crl is None:
        return (
            False,
            f"no full CRL signed by generation {gen.generation} lists its {len(pending)} revoked certificates yet",
        )
    with engine.connect() as conn:
        listed = x509.load_der_x509_crl(crl_der(conn, int(crl.crl_number)))
    signer_key = cert.public_key()
    if not isinstance(signer_key, ec.EllipticCurvePublicKey) or not listed.is_signature_valid(signer_key):
        return (
            False,
            f"CRL {crl.crl_number} does not verify under generation {gen.generation}'s CA certificate",
        )
    missing = [
        serial
        for serial, revoked_at in pending
        if revoked_at >= crl.this_update
        or listed.get_revoked_certificate_by_serial_number(int(serial, 16)) is None
    ]
    if missing:
        return False, (
            f"{len(missing)} revoked certificates of generation {gen.generation} (serial {missing[0]} …) are not "
            f"on its latest full CRL ({crl.crl_number}); publish the CRLs again first"
        )
    return True, (
        f"every certificate generation {gen.generation} issued has expired or is revoked and on its CRL "
        f"{crl.crl_number}"
    )


def refuse_if_needed(config: Config, label: str) -> None:
    """``hsm destroy-key``'s gate: a retired generation's key that may not be destroyed yet, and the next
    generation's key, are refused. The active key keeps ``--retire-current`` (:mod:`ckms_app.hsm.zeroise`)."""
    if label == config.ca_key_label:
        return
    engine = open_engine(config.database_url)
    try:
        allowed, reason = may_destroy(config, engine, label)
        if allowed and not any(g.key_label == label for g in config.generations()):
            blocking = _unlisted_key_still_needed(config, engine, label)
            allowed, reason = (False, blocking) if blocking else (allowed, reason)
    finally:
        engine.dispose()
    if not allowed:
        raise CustodyError(f"{label!r} is still needed: {reason}", code="ca_key_still_needed")


def _unlisted_key_still_needed(config: Config, engine: Engine, label: str) -> str | None:
    """A key ckms.toml does not name may still be a CA key whose ``[[ca.retired]]`` entry was taken out by
    hand: the gate must not rest on an editable file. A key is known by its public key, so what it issued is
    looked up by that (its RFC 5280 key identifier, and the SKI of every CA certificate of this database that
    holds it); while any such certificate has not expired, the key is refused."""
    try:
        with Token(config.token) as token:
            public_key = token.load_ec_key(label).public_key()
    except CkmsError:
        return None  # no EC key pair of that label: nothing this CA issued can depend on it
    key_ids = {x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()}
    now = utcnow()
    with engine.connect() as conn:
        ca_rows = select(certificates.c.der).where(
            certificates.c.kind == "ca", certificates.c.pubkey_sha256 == public_key_sha256(public_key)
        )
        key_ids |= {
            subject_key_id(x509.load_der_x509_certificate(der)) for der in conn.execute(ca_rows).scalars()
        }
        live, revoked = (
            sum(n) for n in zip(*(_counts(conn, key_id, now) for key_id in key_ids), strict=True)
        )
    if live or revoked:
        return (
            f"{label!r} is named by no key generation in ckms.toml, yet it issued {live} valid and {revoked} "
            "revoked certificates that have not expired; destroy it once they have"
        )
    return None


def forget_destroyed(config: Config, label: str, actor: str) -> dict[str, Any]:
    """After ``hsm destroy-key`` of a retired generation's key: its ``[[ca.retired]]`` entry goes, and the
    manifest is signed again (with the active key) over the changed ckms.toml."""
    kept = tuple(g for g in config.ca_retired if g.key_label != label)
    if len(kept) == len(config.ca_retired):
        return {}
    changed = write_ca_tables(config.home, config.active_generation, config.ca_next, kept)
    with Token(changed.token) as token:
        rerecord_manifest(changed, token.load_ec_key(changed.ca_key_label), actor)
    writer = GroupCommitWriter(open_engine(config.database_url, writer=True))
    try:
        writer.run(lambda conn: revoke_key_grants(conn, label))
    finally:
        writer.close()
    gone = next(g.generation for g in config.ca_retired if g.key_label == label)
    return {"retired_generation_removed": gone}
