"""HSM-signed seals of the audit chain (A.06, A.31, F.12–F.14).

Records are hash-chained as they are written (:func:`ckms_app.store.chain.append_audit`). Every
``seal_every_records`` records or ``seal_interval_seconds`` the daemon signs the chain head with the
audit key in the token; a seal fixes everything up to its record, so rewriting the chain (even with
the hash scheme at hand) is detected. The audit key is generated in the token on first use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from ckms_app.algorithms import Curve
from ckms_app.audit import seal_log
from ckms_app.audit.record import SYSTEM, event
from ckms_app.config import AUDIT_KEY_LABEL, AuditConfig
from ckms_app.errors import HsmError
from ckms_app.hsm.token import HsmEcPrivateKey, Token
from ckms_app.store.chain import append_audit
from ckms_app.store.schema import audit_chain_head, audit_events, audit_seals
from ckms_app.store.writer import GroupCommitWriter

log = logging.getLogger("ckms.audit")
EXPORT_FORMAT = "ckms-audit-export/1"
AUDIT_PUBLIC_KEY_FILE = Path("ca") / "audit-key.pub.pem"


# --- the audit key ------------------------------------------------------------------------------
def ensure_audit_key(token: Token, home: Path, curve: Curve, label: str = AUDIT_KEY_LABEL) -> HsmEcPrivateKey:
    """Load the audit key from the token, generating it there on first use (existing CA homes).

    A file lock in the home keeps two processes from generating two keys with the same label.
    The public half is written to ``ca/audit-key.pub.pem`` so an auditor can check an export
    without the token.

    Once that file exists the CA's trail is sealed with that key, on every node: a token without it
    (another node's, or a replacement restored from an old backup) must get it from the CA's wrapped
    backup, and one holding a different key under the label is refused. Generating a new key there
    would make this node's seals and every other node's fail each other's verification.
    """
    lock_path = home / "db" / ".audit-key.lock"
    lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub_path = home / AUDIT_PUBLIC_KEY_FILE
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            key = token.load_ec_key(label)
        except HsmError as exc:
            if "no EC key pair" not in str(exc):
                raise
            if pub_path.exists():
                raise HsmError(
                    f"the token has no audit key {label!r}, but this CA's trail is sealed with the key "
                    f"in {pub_path}: restore it from the CA's wrapped backup (ckms hsm restore) "
                    "instead of starting a second one"
                ) from None
            key = token.generate_ec_key(label, curve)
            log.info("generated the audit sealing key %r in the token", label)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not pub_path.exists():
            pub_path.write_bytes(pem)
        elif serialization.load_pem_public_key(pub_path.read_bytes()) != key.public_key():
            raise HsmError(
                f"the token's audit key {label!r} is not the key this CA's trail is sealed with "
                f"({pub_path}); its seals would not verify"
            )
    return key


def seal_message(up_to_seq: int, chain_hash: str, sealed_at: dt.datetime | str) -> bytes:
    if isinstance(sealed_at, dt.datetime):
        sealed_at = _iso(sealed_at)
    return f"ckms-audit-seal/1\n{int(up_to_seq)}\n{chain_hash}\n{sealed_at}".encode()


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- sealing ------------------------------------------------------------------------------------
def seal_unit(key: HsmEcPrivateKey, *, force: bool = False) -> Callable[[Connection], dict[str, Any] | None]:
    """A writer unit: sign the chain head and record the seal, in one transaction.

    Returns the new seal, or None when nothing new was written since the last seal (its own
    ``audit.seal`` record does not count) and ``force`` is false.
    """

    def unit(conn: Connection) -> dict[str, Any] | None:
        head = conn.execute(
            select(audit_chain_head).where(audit_chain_head.c.chain_id == 1).with_for_update()
        ).first()
        if head is None or head.last_seq == 0:
            return None
        last = conn.execute(select(func.max(audit_seals.c.up_to_seq))).scalar() or 0
        if not force and head.last_seq <= last + 1:
            return None
        sealed_at = dt.datetime.now(dt.UTC)
        signature = key.sign(
            seal_message(head.last_seq, head.last_hash, sealed_at), ec.ECDSA(key.curve_info.hash_algorithm)
        )
        seal = {
            "up_to_seq": int(head.last_seq),
            "chain_hash": head.last_hash,
            "sealed_at": sealed_at,
            "key_label": key.label,
            "signature": signature,
        }
        conn.execute(audit_seals.insert().values(**seal))
        append_audit(
            conn,
            [
                event(
                    SYSTEM,
                    "audit.seal",
                    f"seq:{head.last_seq}",
                    "success",
                    {"chain_hash": head.last_hash, "key": key.label},
                )
            ],
        )
        return seal

    return unit


def seal_and_log(
    writer: GroupCommitWriter, key: HsmEcPrivateKey, config: AuditConfig, *, force: bool = False
) -> dict[str, Any] | None:
    """Seal now (from synchronous code: the ceremony, ``ckms audit seal``) and copy the committed seal
    to the seal log outside the database."""
    seal = writer.run(seal_unit(key, force=force))
    if seal is not None and config.seal_log is not None:
        seal_log.append(config.seal_log, seal, to_syslog=config.seal_syslog)
    return seal


class AuditSealer:
    """Seals the chain every N records or T seconds; one per CA daemon (the CRL-scheduling worker).

    The key is loaded (or, in a CA home that predates it, generated) at the first seal rather
    than at start, so the token is not written while the other workers are logging in.
    """

    def __init__(
        self,
        config: AuditConfig,
        key: Callable[[], HsmEcPrivateKey],
        writer: GroupCommitWriter,
        reader: Engine,
    ) -> None:
        self._config = config
        self._key_provider = key
        self._key_loaded: HsmEcPrivateKey | None = None
        self._writer = writer
        self._reader = reader

    @property
    def _key(self) -> HsmEcPrivateKey:
        if self._key_loaded is None:
            self._key_loaded = self._key_provider()
        return self._key_loaded

    def _due(self, last_sealed_at: float, now: float) -> bool:
        """Every ``seal_every_records`` records, and every ``seal_interval_seconds`` in any case: an idle
        CA seals too (its own previous seal record), so the newest seal always shows that the trail
        was whole a moment ago and a stale one shows that sealing stopped or the tail was cut."""
        if now - last_sealed_at >= self._config.seal_interval_seconds:
            return True
        with self._reader.connect() as conn:
            head = conn.execute(select(audit_chain_head.c.last_seq)).scalar() or 0
            sealed = conn.execute(select(func.max(audit_seals.c.up_to_seq))).scalar() or 0
        return bool(head - sealed >= self._config.seal_every_records)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        tick = min(1.0, max(0.05, self._config.seal_interval_seconds / 4))
        while not stop.is_set():
            try:
                if self._due(last, loop.time()):
                    await self._seal(force=True)
                    last = loop.time()
            except Exception:  # the loop must outlive one failure; the next tick retries
                log.exception("audit sealing failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except TimeoutError:
                pass

    async def seal_now(self) -> dict[str, Any] | None:
        """One more seal if anything is unsealed (the daemon calls this last on its way out)."""
        return await self._seal(force=False)

    async def _seal(self, *, force: bool) -> dict[str, Any] | None:
        seal = await self._writer.submit(seal_unit(self._key, force=force))
        if seal is not None and self._config.seal_log is not None:
            await asyncio.to_thread(
                seal_log.append, self._config.seal_log, seal, to_syslog=self._config.seal_syslog
            )
        return seal


# --- configuration changes ----------------------------------------------------------------------
def config_change_unit(home: Path) -> Callable[[Connection], dict[str, Any] | None]:
    """A writer unit: record ``config.change`` when ckms.toml differs from the last recorded hash.

    The daemon runs it at start, so every configuration in force is on the trail, in order, with
    the hash an auditor can compare with the file (F.12). Returns the audit row, or None.
    """
    digest = hashlib.sha256((home / "ckms.toml").read_bytes()).hexdigest()

    def unit(conn: Connection) -> dict[str, Any] | None:
        last = conn.execute(
            select(audit_events.c.detail)
            .where(audit_events.c.action == "config.change")
            .order_by(audit_events.c.seq.desc())
            .limit(1)
        ).scalar()
        previous = json.loads(last).get("config_sha256") if last else None
        if previous == digest:
            return None
        row = event(
            SYSTEM,
            "config.change",
            "ckms.toml",
            "success",
            {"config_sha256": digest, "previous_sha256": previous},
        )
        append_audit(conn, [row])
        return row

    return unit
