"""Signing a report bundle on the CA host with the HSM audit key (issue 18 part 4).

The audit key is the key that seals the audit trail: it already stands for "this is what the CA's trail
said at that moment", and it never leaves the token. Signing a report with it puts the report next to
the trail: the signature covers the manifest's exact bytes, and an ``audit.report`` record holding the
manifest's SHA-256 is appended to the trail and sealed at once, so the signing itself is audited and a
reviewer can check, from the bundle alone, that the record is in the sealed chain.

Who signs: a person with ``audit.export`` (the auditor or the authority). The signature is the trail's
statement about a report, the same kind of act as exporting the trail; the administrator, who runs the
CA the report judges, does not certify their own report (A.29).

A reviewer holding only the CA certificate needs the audit key tied to it: on first use the CA issues a
certificate for the audit key (through the signer like every certificate: guard, lint, HSM), kept as
``ca/audit-key.cert.pem`` and shipped in every bundle.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.engine import Connection

from ckms_app.audit import seals
from ckms_app.audit.record import Actor, event
from ckms_app.authority.admin_session import AdminSession
from ckms_app.authority.issuance import certificate_row
from ckms_app.authority.signer import open_signer
from ckms_app.config import Config
from ckms_app.errors import BundleError, HsmError
from ckms_app.hsm.token import HsmEcPrivateKey, Token
from ckms_app.reporting import bundle as rb
from ckms_app.store.chain import AUDIT_FIELDS, GENESIS_HASH, append_audit
from ckms_app.store.schema import audit_events, certificates, utcnow
from ckms_app.x509.csr_policy import public_key_sha256
from ckms_app.x509.profiles import end_entity_builder, new_serial

SIGN_OPERATION = "audit.export"
AUDIT_KEY_CERT_FILE = Path("ca") / "audit-key.cert.pem"
AUDIT_KEY_CERT_KIND = "audit-key"
_AUDIT_KEY_CERT_DAYS = 3650  # at most; capped by the CA certificate and the curve's security lifetime


@dataclasses.dataclass(frozen=True)
class Signed:
    """What a signing wrote where, and the trail record that holds it."""

    out_dir: Path
    manifest_sha256: str
    files: int
    run_id: str | None
    audit_seq: int
    sealed_up_to: int

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out_dir": str(self.out_dir)}


def sign_bundle_dir(session: AdminSession, bundle_dir: Path) -> Signed:
    """``ckms report sign BUNDLE_DIR``: manifest every file, sign it, write everything into the bundle."""
    return sign_manifest(session, rb.draft_manifest(bundle_dir), bundle_dir)


def sign_manifest(session: AdminSession, manifest: dict[str, Any], out_dir: Path) -> Signed:
    """Sign a (draft) manifest built elsewhere, e.g. on the lab's controller: add the signer section,
    sign the bytes with the audit key, record and seal ``audit.report``, and write ``manifest.json``,
    ``manifest.sig``, ``audit-record.json``, the audit key and its certificate and the CA certificate
    into ``out_dir`` (copy them into the bundle)."""
    config = session.config
    actor = session.actor
    if actor is None:
        raise BundleError("not authenticated")
    manifest = {k: v for k, v in manifest.items() if k != "signer"}
    ca_cert = x509.load_pem_x509_certificate(config.ca_cert.read_bytes())
    out_dir.mkdir(parents=True, exist_ok=True)
    with Token(config.token) as token:
        ca_key = token.load_ec_key(config.ca_key_label)
        audit_key = seals.ensure_audit_key(token, config.home, ca_key.curve_info, config.audit.key_label)
        audit_cert = ensure_audit_key_certificate(session, ca_key, audit_key, ca_cert, actor)
        manifest["signer"] = {
            "ca": config.ca_name,
            "ca_cert_sha256": rb.cert_sha256(ca_cert),
            "audit_key_label": audit_key.label,
            "audit_key_sha256": rb.key_id(audit_key.public_key()),
            "audit_key_cert_serial": format(audit_cert.serial_number, "x"),
            "signed_by": f"{actor.entity_id} ({actor.role})",
            "signed_at": rb.iso_now(),
            "signature": f"ecdsa-with-{audit_key.curve_info.hash_algorithm.name.upper()}, DER, over {rb.MANIFEST}",
        }
        data = rb.manifest_bytes(manifest)
        signature = audit_key.sign(data, ec.ECDSA(audit_key.curve_info.hash_algorithm))
        audit_key.public_key().verify(signature, data, ec.ECDSA(audit_key.curve_info.hash_algorithm))
        digest = hashlib.sha256(data).hexdigest()
        _write(out_dir / rb.MANIFEST, data)
        _write(out_dir / rb.SIGNATURE, signature)
        _write(out_dir / rb.AUDIT_KEY_PEM, rb.public_pem(audit_key.public_key()))
        _write(out_dir / rb.AUDIT_KEY_CERT, audit_cert.public_bytes(serialization.Encoding.PEM))
        _write(out_dir / rb.CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
        run_id = manifest.get("run_id")
        row = event(
            actor,
            rb.REPORT_ACTION,
            f"report:{run_id or digest[:16]}",
            "success",
            {
                "manifest_sha256": digest,
                "run_id": run_id,
                "files": len(manifest["files"]),
                "audit_key_sha256": manifest["signer"]["audit_key_sha256"],
            },
        )

        def unit(conn: Connection) -> int:
            return append_audit(conn, [row])[0]

        seq = int(session.change(unit, [row]))
        seal = seals.seal_and_log(session.writer, audit_key, config.audit, force=True)
    if seal is None:  # force=True always seals a non-empty trail
        raise HsmError("the audit trail was not sealed after the report record")
    proof = _inclusion_proof(session, seq, seal)
    _write(out_dir / rb.AUDIT_RECORD, rb.manifest_bytes(proof))
    return Signed(out_dir, digest, len(manifest["files"]), run_id, seq, int(seal["up_to_seq"]))


def _write(path: Path, data: bytes) -> None:
    """Write a file of the bundle whole (temp file, then rename), readable by the reviewer (0644)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _inclusion_proof(session: AdminSession, seq: int, seal: dict[str, Any]) -> dict[str, Any]:
    """The report record, the records after it up to the seal, the hash before it and the seal: enough
    to recompute the chain from the record to the sealed head without the database."""
    up_to = int(seal["up_to_seq"])
    with session.reader.connect() as conn:
        rows = conn.execute(
            select(audit_events)
            .where(audit_events.c.seq >= seq, audit_events.c.seq <= up_to)
            .order_by(audit_events.c.seq)
        ).mappings()
        records = [_record(r) for r in rows]
        prev = (
            conn.execute(select(audit_events.c.chain_hash).where(audit_events.c.seq == seq - 1)).scalar()
            if seq > 1
            else GENESIS_HASH
        )
    sealed_at = seal["sealed_at"]
    return {
        "format": rb.RECORD_FORMAT,
        "prev_hash": prev,
        "record": records[0],
        "following": records[1:],
        "seal": {
            "up_to_seq": up_to,
            "chain_hash": seal["chain_hash"],
            "sealed_at": _iso(sealed_at) if isinstance(sealed_at, dt.datetime) else str(sealed_at),
            "key_label": seal["key_label"],
            "signature": base64.b64encode(bytes(seal["signature"])).decode(),
        },
    }


def _record(row: Any) -> dict[str, Any]:
    record = {name: row[name] for name in AUDIT_FIELDS}
    if isinstance(record["at"], dt.datetime):
        record["at"] = _iso(record["at"])
    record["chain_hash"] = row["chain_hash"]
    return record


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the audit key's certificate ----------------------------------------------------------------------
def ensure_audit_key_certificate(
    session: AdminSession,
    ca_key: HsmEcPrivateKey,
    audit_key: HsmEcPrivateKey,
    ca_cert: x509.Certificate,
    who: Actor,
) -> x509.Certificate:
    """The CA's certificate for its audit key, issued on first use and kept in ``ca/audit-key.cert.pem``.

    A certificate already there is reused while it certifies this audit key under this CA certificate
    and is valid; otherwise a new one is issued (a new CA certificate after a rollover, say)."""
    config = session.config
    path = config.home / AUDIT_KEY_CERT_FILE
    if path.exists():
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if (
            cert.public_key() == audit_key.public_key()
            and cert.issuer == ca_cert.subject
            and cert.not_valid_after_utc > dt.datetime.now(dt.UTC)
        ):
            try:
                cert.verify_directly_issued_by(ca_cert)
                return cert
            except (ValueError, TypeError):
                pass
    cert = asyncio.run(_issue_audit_key_certificate(session, config, ca_key, audit_key, ca_cert, who))
    _write(path, cert.public_bytes(serialization.Encoding.PEM))
    return cert


async def _issue_audit_key_certificate(
    session: AdminSession,
    config: Config,
    ca_key: HsmEcPrivateKey,
    audit_key: HsmEcPrivateKey,
    ca_cert: x509.Certificate,
    who: Actor,
) -> x509.Certificate:
    """Through the signer (guard → lint → HSM), like every certificate the CA signs: an end-entity
    certificate for the audit key, for signatures only (digitalSignature, nonRepudiation), no EKU."""
    public_key = audit_key.public_key()
    # as long as the CA certificate and the audit key's curve allow, never beyond either (A.62)
    until = min(ca_cert.not_valid_after_utc, audit_key.curve_info.secure_until)
    days = min(_AUDIT_KEY_CERT_DAYS, (until - dt.datetime.now(dt.UTC)).days - 1)
    if days < 1:
        raise HsmError("the CA certificate expires within two days: no audit key certificate can be issued")
    profile = dataclasses.replace(
        config.profile("identity"),
        name=AUDIT_KEY_CERT_KIND,
        validity_days=days,
        key_usage=("digital_signature", "content_commitment"),
        extended_key_usage=(),
    )
    builder = end_entity_builder(
        profile=profile,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{config.ca_name} audit key")]),
        sans=(),
        public_key=public_key,
        issuer=ca_cert,
        serial=new_serial(),
        now=utcnow(),
        crl_url=config.server.crl_url("full", config.ca_generation),
        delta_crl_url=config.server.crl_url("delta", config.ca_generation),
    )
    async with open_signer(config, ca_key, session.writer) as signer:
        cert, der = await signer.certificate(builder, "audit key certificate")
    row = certificate_row(
        cert,
        der,
        kind=AUDIT_KEY_CERT_KIND,
        profile=AUDIT_KEY_CERT_KIND,
        requested_by=who.entity_id,
        csr_sha256=None,
        pubkey_sha256=public_key_sha256(public_key),
    )
    audit = event(
        who,
        "certificate.issue",
        str(row["serial"]),
        "success",
        {"kind": AUDIT_KEY_CERT_KIND, "subject": row["subject"]},
    )

    def store(conn: Connection) -> None:
        append_audit(conn, [audit])  # chain head first: the lock order every writer keeps
        conn.execute(certificates.insert(), row)

    await session.writer.submit(store)
    return cert
