"""Full and delta CRLs (RFC 5280 §5; A.38, A.59, A.64).

Every publication signs a new *full* CRL holding every revocation, and a *delta* CRL holding the
revocations since the current *base* full CRL. A new base starts every ``full_interval_seconds``,
so a client that keeps the hourly base only needs the small delta in between. Full and delta
CRLs share one CRL-number sequence, which only grows. Each CRL is linted (throwaway-signed copy)
before the HSM signs it, stored in the database, and written atomically to the CRL directory.

Several publishers share one sequence: every worker process of a node may publish on request, and
several CA nodes share one PostgreSQL database. Reading ``max(crl_number) + 1``, signing, and then
inserting would let two of them pick the same number, or commit a higher number before a lower one
with fewer revocations in it. So a publication holds a lock from the moment it picks its number
until its rows are committed (:class:`PostgresSequence`, :class:`SqliteSequence`): on PostgreSQL
a transaction-scoped advisory lock, which every node sees; on SQLite (one host) a lock file next to
the database. Neither holds up issuance: signing a CRL with thousands of entries takes a good part
of a second, far too long to keep SQLite's write lock. CRL numbers are therefore strictly increasing
in commit order on every node, and each CRL holds every revocation committed before it.

Expired certificates (RFC 5280 §3.3, §5): an entry stays until it has appeared on one CRL issued after
the certificate's notAfter, then it is removed. A full CRL therefore holds every revocation except those
whose certificate had already expired when the *previous* full CRL was issued (that CRL, issued beyond
the validity period, carried the entry once). A revocation committed after the previous CRL is always
listed once, even for a certificate that has expired since. This keeps a factory's CRL at the
revocations of living devices instead of growing for ever (A.42: 10,000 revocations a year).

Factory scale (issue 14 part 6): a full CRL of 100,000 entries. The builder is made in one call from
the finished entry list (``add_revoked_certificate`` copies the list each time, quadratic in the
entries), and each entry is built once per process and reused by every later publication (a revocation
never changes), so a publication costs the new entries, the signature and the lint.

Several keys (a rollover, docs/ca-key-rollover.md): each key that signs CRLs (the active one and every
retired one) is a :class:`CrlIssuer`. A publication signs a full and a delta CRL for each of them, under
the one lock and from the one number sequence; each lists the revocations of the certificates its own key
issued (``certificates.issuer_key_id``), carries its own key's identifier and lives at its generation's
address. A revocation whose certificate the database does not know is listed by the oldest key.

Why this module is long: a publication is one locked unit (number, entries of every key, signatures, rows,
audit record, files), and splitting it would spread the lock's rules over several modules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection, Engine, Row, make_url

from ckms_app.audit.record import event, record, refusal
from ckms_app.authority.crl_sequence import PostgresSequence, SqliteSequence, close_if_acquired
from ckms_app.authority.rbac import SYSTEM, Principal
from ckms_app.authority.revocation import REASONS
from ckms_app.authority.signer import Signer
from ckms_app.config import CaGeneration, Config
from ckms_app.errors import CkmsError
from ckms_app.store.chain import append_audit
from ckms_app.store.engine import open_engine
from ckms_app.store.queries import latest_crl
from ckms_app.store.schema import certificates, crls, revocations, utcnow
from ckms_app.store.writer import GroupCommitWriter
from ckms_app.x509 import crl_der
from ckms_app.x509.key_ids import subject_key_id

log = logging.getLogger("ckms.crl")
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Published:
    full_number: int
    delta_number: int
    base_number: int
    revoked_count: int
    this_update: dt.datetime


@dataclass(frozen=True)
class CrlIssuer:
    """One key that signs CRLs: the certificates it issued, where its CRLs live, and its signer."""

    generation: int
    signer: Signer  # guard (error state, clock gate) → lint → the HSM signs the linted TBS
    ca_cert: x509.Certificate
    key_id: str  # the CA certificate's SKI (hex): certificates.issuer_key_id and crls.issuer_key_id
    aki: x509.AuthorityKeyIdentifier
    delta_url: str
    directory: Path  # this node's copy of its CRLs: [crl] directory for generation 1, g<n>/ under it after
    lists_unknown: bool  # the oldest key also lists revocations of certificates the database does not hold

    @classmethod
    def of(
        cls, config: Config, generation: CaGeneration, signer: Signer, ca_cert: x509.Certificate, oldest: bool
    ) -> CrlIssuer:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        n = generation.generation
        return cls(
            generation=n,
            signer=signer,
            ca_cert=ca_cert,
            key_id=subject_key_id(ca_cert),
            aki=x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            delta_url=config.server.crl_url("delta", n),
            directory=config.crl.directory if n == 1 else config.crl.directory / f"g{n}",
            lists_unknown=oldest,
        )

    @classmethod
    def single(cls, config: Config, signer: Signer, ca_cert: x509.Certificate) -> list[CrlIssuer]:
        """The active key alone (the ceremony, before any rollover)."""
        return [cls.of(config, config.active_generation, signer, ca_cert, oldest=True)]


class CrlPublisher:
    def __init__(
        self,
        config: Config,
        issuers: Sequence[CrlIssuer],
        writer: GroupCommitWriter,
        reader: Engine,
    ) -> None:
        if not issuers:
            raise CkmsError("a CRL publisher needs at least one signing key")
        self._config = config
        self._issuers = tuple(issuers)  # the active key first
        self._signer = issuers[0].signer  # the guard is the same for every key
        self._writer = writer
        self._reader = reader
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._lock_engine: Engine | None = None  # opened at the first publication
        # revocation id → its DER CRL entry, encoded once per process (a revocation row never changes)
        self._entries: dict[int, bytes] = {}

    # --- scheduling ---------------------------------------------------------------------------
    def notify_revocation(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish at start, after revocations (debounced) and before the current CRLs go stale."""
        cfg = self._config.crl
        while not stop.is_set():
            try:
                if self.needs_publication():
                    # Another node (or worker) may publish the same revocations first: re-checked
                    # under the lock, so a burst is published once, not once per node.
                    await self._publish(SYSTEM, only_if_needed=True)
            except CkmsError as exc:
                log.error("CRL publication failed: %s", exc)
            except Exception:  # the loop must outlive any single failure; the next round retries
                log.exception("CRL publication failed unexpectedly")
            waiter = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            # Poll the database every second as well: a revocation taken by another worker process
            # or another CA node never reaches this process's wake event.
            await asyncio.wait(
                {waiter, stopper},
                timeout=min(_POLL_SECONDS, max(0.1, cfg.max_publish_delay_seconds)),
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            stopper.cancel()
            if self._wake.is_set():
                self._wake.clear()
                # Short debounce: a burst of revocations lands in one CRL.
                await asyncio.sleep(min(0.5, cfg.max_publish_delay_seconds / 10))

    def needs_publication(self) -> bool:
        with self._reader.connect() as conn:
            return self._needs_publication(conn)

    def _needs_publication(self, conn: Connection) -> bool:
        cfg = self._config.crl
        newest_revocation = conn.execute(select(func.max(revocations.c.id))).scalar() or 0
        stale_after = min(cfg.full_interval_seconds, cfg.delta_validity_hours * 3600 / 2)
        for issuer in self._issuers:
            latest = latest_crl(conn, ("full", "base"), issuer.key_id)
            if latest is None:
                return True
            age = (utcnow() - latest.this_update).total_seconds()
            if newest_revocation > latest.max_revocation_id or age >= stale_after:
                return True
        return False

    # --- building -----------------------------------------------------------------------------
    async def publish(self, principal: Principal = SYSTEM) -> Published:
        published = await self._publish(principal, only_if_needed=False)
        assert published is not None  # only_if_needed=False always publishes or raises
        return published

    async def _publish(self, principal: Principal, *, only_if_needed: bool) -> Published | None:
        async with self._lock:
            try:
                await self._signer.guard.check()  # refuse before taking the CRL-number lock
            except CkmsError as exc:
                await record(self._writer, principal, "crl.publish", "crl", "error", refusal(exc))
                raise
            sequence = await self._sequence()
            try:
                if only_if_needed and not await sequence.read(self._needs_publication):
                    return None
                result, files = await self._publish_locked(sequence, principal)
            finally:
                await sequence.release()
            for issuer, written in zip(self._issuers, files, strict=True):
                self._write_files(issuer.directory, *written)
            return result

    async def _sequence(self) -> PostgresSequence | SqliteSequence:
        """Take the CRL-number lock of this database (waits for a publication in progress).

        The wait runs in a thread that a cancelled caller (a client that hung up) cannot stop, so
        a lock it obtains after the cancellation is released at once instead of blocking every
        publisher on every node for good.
        """
        acquiring: asyncio.Future[PostgresSequence | SqliteSequence]
        if make_url(self._config.database_url).get_backend_name() == "postgresql":
            if self._lock_engine is None:
                self._lock_engine = open_engine(self._config.database_url)
            acquiring = asyncio.ensure_future(asyncio.to_thread(PostgresSequence.acquire, self._lock_engine))
        else:
            acquiring = asyncio.ensure_future(
                asyncio.to_thread(
                    SqliteSequence.acquire, self._config.database_url, self._reader, self._writer
                )
            )
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            acquiring.add_done_callback(close_if_acquired)
            raise

    async def _publish_locked(
        self, sequence: PostgresSequence | SqliteSequence, principal: Principal
    ) -> tuple[Published, list[tuple[int, bytes, bytes, bytes | None]]]:
        """Pick the next numbers, sign full and delta CRLs of every key, store and commit them: under the lock."""
        now = utcnow().replace(microsecond=0)

        def read(conn: Connection) -> tuple[int, int, list[tuple[Row[Any] | None, list[int]]]]:
            number = int(conn.execute(select(func.max(crls.c.crl_number))).scalar() or 0) + 1
            # the newest revocation of all, listed or not (an expired one may be dropped from the list)
            max_id = int(conn.execute(select(func.max(revocations.c.id))).scalar() or 0)
            per_issuer = []
            for issuer in self._issuers:
                ids = _listed_revocation_ids(conn, issuer)
                self._build_missing_entries(conn, ids)
                per_issuer.append((latest_crl(conn, ("base",), issuer.key_id), ids))
            return number, max_id, per_issuer

        number, max_id, per_issuer = await sequence.read(read)
        records: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        files: list[tuple[int, bytes, bytes, bytes | None]] = []
        published: list[Published] = []
        for issuer, (base, rows) in zip(self._issuers, per_issuer, strict=True):
            signed = await self._sign_pair(issuer, number, now, max_id, base, rows, principal)
            records += signed[0]
            audits.append(signed[1])
            files.append(signed[2])
            published.append(signed[3])
            number += 2

        def store(conn: Connection) -> None:
            conn.execute(crls.insert(), records)
            append_audit(conn, audits)

        await sequence.store(store)
        return published[0], files

    async def _sign_pair(
        self,
        issuer: CrlIssuer,
        number: int,
        now: dt.datetime,
        max_id: int,
        base: Row[Any] | None,
        rows: list[int],
        principal: Principal,
    ) -> tuple[list[dict[str, Any]], dict[str, Any], tuple[int, bytes, bytes, bytes | None], Published]:
        """One key's full CRL (number) and delta CRL (number + 1): rows, audit record, files, summary."""
        if base is None or (now - base.this_update).total_seconds() >= self._config.crl.full_interval_seconds:
            new_base, base_number, base_max_id = True, number, max_id  # this full CRL starts a new base
        else:
            new_base, base_number, base_max_id = False, int(base.crl_number), int(base.max_revocation_id)
        full_next = now + dt.timedelta(hours=self._config.crl.validity_hours)
        delta_next = now + dt.timedelta(hours=self._config.crl.delta_validity_hours)

        full_der = await issuer.signer.crl(
            self._builder(issuer, number, now, full_next, delta_base=None), "full CRL", self._listed(rows)
        )
        delta_rows = [i for i in rows if i > base_max_id]
        delta_builder = self._builder(issuer, number + 1, now, delta_next, delta_base=base_number)
        delta_der = await issuer.signer.crl(delta_builder, "delta CRL", self._listed(delta_rows))

        records: list[dict[str, Any]] = [
            {
                "crl_number": number,
                "kind": "base" if new_base else "full",
                "base_crl_number": None,
                "this_update": now,
                "next_update": full_next,
                "max_revocation_id": max_id,
                "der": full_der,
                "issuer_key_id": issuer.key_id,
            },
            {
                "crl_number": number + 1,
                "kind": "delta",
                "base_crl_number": base_number,
                "this_update": now,
                "next_update": delta_next,
                "max_revocation_id": max_id,
                "der": delta_der,
                "issuer_key_id": issuer.key_id,
            },
        ]
        audit = event(
            principal,
            "crl.publish",
            f"crl:{number}",
            "success",
            {
                "full": number,
                "delta": number + 1,
                "base": base_number,
                "entries": len(rows),
                "generation": issuer.generation,
                "issuer_key_id": issuer.key_id,
            },
        )
        return (
            records,
            audit,
            (number, full_der, delta_der, full_der if new_base else None),
            Published(number, number + 1, base_number, len(rows), now),
        )

    def _builder(
        self,
        issuer: CrlIssuer,
        number: int,
        now: dt.datetime,
        next_update: dt.datetime,
        delta_base: int | None,
    ) -> x509.CertificateRevocationListBuilder:
        """The CRL's header and extensions; its entries go to the signer as DER (see "Factory scale")."""
        extensions: list[x509.Extension[x509.ExtensionType]] = [
            x509.Extension(issuer.aki.oid, False, issuer.aki),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ]
        if delta_base is None:
            freshest = x509.FreshestCRL(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(issuer.delta_url)], None, None, None)]
            )
            extensions.append(x509.Extension(freshest.oid, False, freshest))
        else:
            indicator = x509.DeltaCRLIndicator(delta_base)
            extensions.append(x509.Extension(indicator.oid, True, indicator))
        return x509.CertificateRevocationListBuilder(
            issuer_name=issuer.ca_cert.subject,
            last_update=_naive_utc(now),
            next_update=_naive_utc(next_update),
            extensions=extensions,
            revoked_certificates=[],
        )

    def _listed(self, ids: list[int]) -> list[bytes]:
        return [self._entries[i] for i in ids]

    def _build_missing_entries(self, conn: Connection, ids: list[int]) -> None:
        """Build the CRL entries of the listed revocations this process has not built yet (all of them
        at the first publication, the new revocations afterwards); a revocation row never changes."""
        missing = [i for i in ids if i not in self._entries]
        if not missing:
            return
        wanted = set(missing)
        query = select(revocations.c.id, revocations.c.serial, revocations.c.reason, revocations.c.revoked_at)
        for row in conn.execute(query.where(revocations.c.id >= min(missing))):
            if row.id in wanted:
                # RFC 5280: omit the reason rather than say unspecified
                code = None if row.reason == "unspecified" else crl_der.REASON_CODES[REASONS[row.reason]]
                self._entries[row.id] = crl_der.entry(int(row.serial, 16), row.revoked_at, code)

    @staticmethod
    def _write_files(directory: Path, number: int, full: bytes, delta: bytes, base: bytes | None) -> None:
        """Copy a committed publication of one key to this node's CRL directory, never over a newer one.

        Workers write after their commit, so a slower worker could finish after a newer
        publication; a file lock and the recorded numbers keep the newest CRLs in place.
        """
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".publish.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            numbers_path = directory / ".numbers.json"
            try:
                written = json.loads(numbers_path.read_text())
            except (FileNotFoundError, ValueError):
                written = {}
            changed = False
            if number > int(written.get("full", 0)):
                _atomic_write(directory / "full.crl", full)
                _atomic_write(directory / "delta.crl", delta)
                written["full"], changed = number, True
            if base is not None and number > int(written.get("base", 0)):
                _atomic_write(directory / "base.crl", base)
                written["base"], changed = number, True
            if changed:
                _atomic_write(numbers_path, json.dumps(written).encode())


def _listed_revocation_ids(conn: Connection, issuer: CrlIssuer) -> list[int]:
    """The revocations a key's new full CRL lists, in revocation order: those of the certificates it issued,
    but not those whose certificate had expired when its previous full CRL was issued (that CRL listed them
    once; RFC 5280 §3.3)."""
    previous = latest_crl(conn, ("full", "base"), issuer.key_id)
    issued_by = certificates.c.issuer_key_id == issuer.key_id
    if issuer.lists_unknown:
        issued_by = or_(issued_by, certificates.c.issuer_key_id.is_(None))
    query = (
        select(revocations.c.id)
        .select_from(revocations.outerjoin(certificates, certificates.c.serial == revocations.c.serial))
        .where(issued_by)
        .order_by(revocations.c.id)
    )
    if previous is not None:
        query = query.where(
            or_(
                certificates.c.not_after.is_(None),  # no record of its expiry: keep it
                certificates.c.not_after > previous.this_update,  # not yet on a CRL after expiry
                revocations.c.id > previous.max_revocation_id,  # new since: listed at least once
            )
        )
    return list(conn.execute(query).scalars())


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    # what the CRL builders store; their constructors take the values as they are
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
