"""Durable state of the CA: certificates, revocations, CRLs, entities and the audit trail.

SQLAlchemy Core over SQLite (WAL, ``synchronous=FULL``) by default or PostgreSQL for several CA
nodes. Writes go through :class:`GroupCommitWriter`: the daemon hands it one *unit of work* per
request (for an issuance: the certificate row and its audit record), and the writer commits
many units in one durable transaction, each inside its own savepoint so one failing unit (say, a
duplicate request) does not take the others with it. A client only gets its certificate after
the commit, so a killed process never loses a certificate a client holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Insert

T = TypeVar("T")
metadata = MetaData()


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC: SQLite has no time zones, and mixing naive and aware
    datetimes is a bug waiting to happen."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(42), primary_key=True),  # lower-case hex, no leading zeros
    Column("kind", String(16), nullable=False),  # end-entity | identity | tls-server | ca
    Column("profile", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("sans", Text, nullable=False),
    Column("not_before", UtcDateTime(), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("csr_sha256", String(64), unique=True, nullable=True),
    Column("pubkey_sha256", String(64), nullable=False, index=True),
    Column("status", String(8), nullable=False),  # valid | revoked
    Column("der", LargeBinary, nullable=False),
)

revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # order for delta CRLs
    Column("serial", String(42), unique=True, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=False),
    Column("revoked_by", String(128), nullable=False),
)

crls = Table(
    "crls",
    metadata,
    Column("crl_number", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),  # full | delta
    Column("base_crl_number", BigInteger, nullable=True),
    Column("this_update", UtcDateTime(), nullable=False),
    Column("next_update", UtcDateTime(), nullable=False),
    Column("max_revocation_id", Integer, nullable=False),
    Column("der", LargeBinary, nullable=False),
)

entities = Table(
    "entities",
    metadata,
    Column("entity_id", String(128), primary_key=True),
    # Label of the entity's current grants ("operator", "a+b", or "none"); the grants themselves are
    # in entity_roles. Rewritten in the same transaction as every grant change, so resolving a
    # principal stays one row read.
    Column("role", String(32), nullable=False),
    Column("cert_sha256", String(64), unique=True, nullable=True),  # its client certificate
    Column("cert_serial", String(42), nullable=True),
    Column("status", String(16), nullable=False),  # active | disabled
    Column("created_at", UtcDateTime(), nullable=False),
    Column("password_hash", Text, nullable=True),  # passwords.hash_password (scrypt), never the password
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("outcome", String(16), nullable=False),  # success | denied | error
    Column("detail", Text, nullable=False),
    # SHA-256 over the previous record's chain_hash and this record (see audit_record_hash).
    Column("chain_hash", String(64), nullable=True),
)

# --- schema version 2: entities with several role grants, ACLs, the audit chain and its seals ----
entity_roles = Table(
    "entity_roles",
    metadata,
    Column("entity_id", String(128), primary_key=True),
    Column("role", String(32), primary_key=True),
    Column("granted_at", UtcDateTime(), nullable=False),
    Column("granted_by", String(128), nullable=False),
)

# role -> operation -> resource ("*", "profile:<name>" or "key:<label>"); seeded from rbac.DEFAULT_ACL.
role_permissions = Table(
    "role_permissions",
    metadata,
    Column("role", String(32), primary_key=True),
    Column("operation", String(64), primary_key=True),
    Column("resource", String(128), primary_key=True),
)

# One row per chain: the newest record's seq and hash. Writers lock it (FOR UPDATE on PostgreSQL;
# SQLite's writer already holds the database write lock) so concurrent writers extend one chain.
audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("chain_id", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

# A signature by the HSM audit key over (up_to_seq, chain_hash, sealed_at).
audit_seals = Table(
    "audit_seals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("up_to_seq", BigInteger, nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("sealed_at", UtcDateTime(), nullable=False),
    Column("key_label", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

# Named counters. "entity_generation" grows with every change to entities, role grants, ACLs or an
# identity certificate's status, so each worker can tell with one cheap read that its cache is stale.
security_state = Table(
    "security_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema."""
    metadata.create_all(conn, tables=[certificates, revocations, crls, entities, audit_events])


def _migration_2(conn: Connection) -> None:
    """Role grants, ACLs, passwords, the audit hash chain and seals.

    Version 1 databases get the new columns; a fresh database already has them (migration 1 creates
    the current table definitions), hence the column check. Existing entities keep their role as a
    grant, and existing audit records are chained in order, so the chain starts at record 1.
    """
    from .rbac import DEFAULT_ACL

    for table, column in ((audit_events, audit_events.c.chain_hash), (entities, entities.c.password_hash)):
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        if column.name not in present:
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            conn.exec_driver_sql(ddl)
    metadata.create_all(conn, tables=[entity_roles, role_permissions, audit_chain_head, audit_seals, security_state])
    now = utcnow()
    for row in conn.execute(select(entities.c.entity_id, entities.c.role)).all():
        conn.execute(entity_roles.insert().values(entity_id=row.entity_id, role=row.role, granted_at=now,
                                                  granted_by="migration-2"))
    conn.execute(role_permissions.insert(), [{"role": r, "operation": op, "resource": res}
                                             for r, op, res in sorted(DEFAULT_ACL)])
    conn.execute(security_state.insert().values(name="entity_generation", value=1))
    prev, last_seq = GENESIS_HASH, 0
    for record in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings().all():
        prev = audit_record_hash(prev, record)
        last_seq = record["seq"]
        conn.execute(update(audit_events).where(audit_events.c.seq == last_seq).values(chain_hash=prev))
    conn.execute(audit_chain_head.insert().values(chain_id=1, last_seq=last_seq, last_hash=prev))


# Ordered, append-only. A migration never changes once released; add a new one instead.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _migration_1), (2, _migration_2)]


def open_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine for reads, or (``writer=True``) for the one thread that writes.

    SQLite: readers use deferred transactions, which never block in WAL mode. The writer takes
    the write lock up front (BEGIN IMMEDIATE) and retries it itself every millisecond instead of
    relying on SQLite's busy handler, whose back-off sleeps up to 100 ms at a time and would
    turn lock contention between worker processes into latency spikes.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 0 if writer else 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself so SAVEPOINTs work with pysqlite.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # durable at commit, also across power loss
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        if not writer:
            conn.exec_driver_sql("BEGIN")
            return
        deadline = time.monotonic() + _WRITE_LOCK_TIMEOUT
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    return engine


_WRITE_LOCK_TIMEOUT = 30.0


# pg_advisory_xact_lock key of the schema migrations ("ckms_mig" in ASCII).
MIGRATION_LOCK_KEY = 0x636B6D735F6D6967


def migrate(engine: Engine) -> int:
    """Apply pending migrations; returns the schema version. Safe to run on every start.

    On PostgreSQL several CA nodes may start at once (after an upgrade, say): a transaction-scoped
    advisory lock lets one of them apply what is pending while the others wait, then find it done.
    Without it two nodes would both create the tables or apply the same migration twice.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        schema_migrations.create(conn, checkfirst=True)
        done = {row[0] for row in conn.execute(select(schema_migrations.c.version))}
        for version, apply in MIGRATIONS:
            if version not in done:
                apply(conn)
                conn.execute(schema_migrations.insert().values(version=version, applied_at=utcnow()))
        return max(v for v, _ in MIGRATIONS)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def audit_row(
    *, entity_id: str, role: str, action: str, target: str, outcome: str, detail: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "entity_id": entity_id,
        "role": role,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": json.dumps(detail or {}, sort_keys=True, separators=(",", ":")),
    }


GENESIS_HASH = "0" * 64
AUDIT_FIELDS = ("seq", "at", "entity_id", "role", "action", "target", "outcome", "detail")


def audit_record_hash(prev_hash: str, record: Any) -> str:
    """The chain hash of one audit record: SHA-256 over the previous hash and the record's fields.

    The fields go in as canonical JSON (sorted keys, UTC time to the microsecond), so anyone with an
    export can recompute the chain without this code, and an edit to any field, a deleted or
    inserted record, or a change of order changes every hash from that record on.
    """
    at = record["at"]
    if isinstance(at, dt.datetime):
        at = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = {name: record[name] for name in AUDIT_FIELDS}
    fields["at"] = at
    fields["seq"] = int(fields["seq"])
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


# The writer's statements, built once: SQLAlchemy caches their compiled form by identity, so the
# group-commit thread skips constructing and cache-keying them on every batch.
_CHAIN_HEAD_FOR_UPDATE = (select(audit_chain_head.c.last_seq, audit_chain_head.c.last_hash)
                          .where(audit_chain_head.c.chain_id == 1).with_for_update())
_CHAIN_HEAD_UPDATE = (update(audit_chain_head).where(audit_chain_head.c.chain_id == 1)
                      .values(last_seq=bindparam("new_seq"), last_hash=bindparam("new_hash")))
_AUDIT_INSERT = audit_events.insert()


@functools.cache
def insert_into(table: Table) -> Insert:
    """The (immutable, cached) INSERT statement for a table."""
    return table.insert()


def append_audit(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Append audit records to the hash chain inside the caller's transaction; returns their seqs.

    The only way records enter ``audit_events`` (a guard refuses any other insert). The chain head
    is read with a row lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the writer already holds
    the database write lock from BEGIN IMMEDIATE), so writers in several processes or on several
    nodes queue here and produce one unbroken chain. Rolling back the transaction or savepoint also
    rolls back the head, so a failed unit leaves no gap.
    """
    if not rows:
        return []
    head = conn.execute(_CHAIN_HEAD_FOR_UPDATE).first()
    if head is None:
        raise RuntimeError("the audit chain head is missing: run the database migrations")
    seq, prev = int(head.last_seq), head.last_hash
    chained = []
    for row in rows:
        seq += 1
        record = {**row, "seq": seq}
        prev = audit_record_hash(prev, record)
        record["chain_hash"] = prev
        chained.append(record)
    conn.info["ckms_audit_append"] = True
    try:
        conn.execute(_AUDIT_INSERT, chained)
    finally:
        conn.info.pop("ckms_audit_append", None)
    conn.execute(_CHAIN_HEAD_UPDATE, {"new_seq": seq, "new_hash": prev})
    return [r["seq"] for r in chained]


class AuditBypass(RuntimeError):
    """Something tried to insert into audit_events without going through :func:`append_audit`."""


@event.listens_for(Engine, "before_execute")
def _refuse_unchained_audit_inserts(conn: Connection, clauseelement: Any, *_args: Any) -> None:
    if (getattr(clauseelement, "is_insert", False) and getattr(clauseelement, "table", None) is audit_events
            and not conn.info.get("ckms_audit_append")):
        raise AuditBypass("audit records must be written with storage.append_audit (hash chain)")


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


@dataclass(frozen=True)
class Inserts:
    """A unit of work that only inserts rows: batched into one multi-row INSERT per table."""

    rows: tuple[tuple[Table, dict[str, Any]], ...]

    def __call__(self, conn: Connection) -> None:
        audit = [row for table, row in self.rows if table is audit_events]
        if audit:
            append_audit(conn, audit)  # chain head first: the lock order of every writer
        for table, row in self.rows:
            if table is not audit_events:
                conn.execute(insert_into(table), row)


Unit = Callable[[Connection], Any]


class WriteTurn:
    """Group-commit writers on one SQLite file take turns through an advisory file lock.

    SQLite has no queue for its write lock: a writer that finds it taken must poll (BEGIN
    IMMEDIATE every millisecond here), and each failed attempt costs Python time in the waiting
    process while the holder is waiting for its fsync. The daemon's worker processes each own a
    writer, so they would spend CPU polling each other. Holding ``<database>-writer.lock`` (flock)
    from BEGIN to COMMIT makes the next writer sleep in the kernel and wake the moment the previous
    commit is done. Other writers (CLI commands) still meet the real lock, BEGIN IMMEDIATE, and poll.
    PostgreSQL queues lock waiters itself: there the turn is a no-op.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd: int | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> WriteTurn:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        return cls(f"{database}-writer.lock" if database and database != ":memory:" else None)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class GroupCommitWriter:
    """One thread owning the write connection; units of work are batched into durable commits.

    ``submit`` is for the asyncio daemon; ``run`` is for synchronous callers. A unit is a callable
    taking a :class:`Connection`; its return value (or exception) goes back to the caller.
    """

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self._engine = engine
        self._turn = WriteTurn.for_engine(engine)
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[Callable[[Connection], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="ckms-group-commit", daemon=True)
        self._closed = False
        self.commits = 0
        self.units = 0
        self._thread.start()

    def run(self, unit: Callable[[Connection], T]) -> T:
        return self._enqueue(unit).result()

    async def submit(self, unit: Callable[[Connection], T]) -> T:
        return await asyncio.wrap_future(self._enqueue(unit))

    def _enqueue(self, unit: Callable[[Connection], Any]) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the database writer is closed")
        fut: Future[Any] = Future()
        self._queue.put((unit, fut))
        return fut

    def close(self) -> None:
        """Finish every queued unit, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._engine.dispose()
            self._turn.close()

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]]) -> None:
        # Optimistic: the whole batch in one transaction without savepoints (the common case).
        # If any unit fails, undo everything and replay the batch with one savepoint per unit,
        # so only the failing unit is lost. Units are pure functions of the connection, so a
        # replay is safe.
        try:
            results = self._run_batch(batch, isolate=False)
        except _UnitFailed:
            try:
                results = self._run_batch(batch, isolate=True)
            except BaseException as exc:
                self._fail_all(batch, exc)
                return
        except BaseException as exc:  # the commit itself failed (disk full, lock): nothing landed
            self._fail_all(batch, exc)
            return
        self.commits += 1
        self.units += len(batch)
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_batch(self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]],
                   isolate: bool) -> list[tuple[Future[Any], bool, Any]]:
        results: list[tuple[Future[Any], bool, Any]] = []
        with self._turn(), self._engine.begin() as conn:
            if not isolate:
                try:
                    self._run_optimistic(conn, batch, results)
                except Exception as exc:
                    raise _UnitFailed() from exc
                return results
            for unit, fut in batch:
                savepoint = conn.begin_nested()
                try:
                    value = unit(conn)
                except Exception as exc:  # the unit failed; its savepoint is undone
                    savepoint.rollback()
                    results.append((fut, False, exc))
                else:
                    savepoint.commit()
                    results.append((fut, True, value))
        return results

    @staticmethod
    def _run_optimistic(conn: Connection, batch: list[tuple[Unit, Future[Any]]],
                        results: list[tuple[Future[Any], bool, Any]]) -> None:
        """Run units in order; consecutive ``Inserts`` become one executemany per table."""
        pending: dict[Table, list[dict[str, Any]]] = {}

        def flush() -> None:
            # The audit chain head first: every writer (revocation, entity changes, other nodes)
            # takes that row lock before touching other tables, so lock order is the same
            # everywhere and concurrent writers on PostgreSQL queue instead of deadlocking.
            audit = pending.pop(audit_events, None)
            if audit:
                append_audit(conn, audit)  # one chain-head read and update for the whole batch
            for table, rows in pending.items():
                conn.execute(insert_into(table), rows)
            pending.clear()

        for unit, fut in batch:
            if isinstance(unit, Inserts):
                for table, row in unit.rows:
                    pending.setdefault(table, []).append(row)
                results.append((fut, True, None))
            else:
                flush()
                results.append((fut, True, unit(conn)))
        flush()

    @staticmethod
    def _fail_all(batch: list[tuple[Callable[[Connection], Any], Future[Any]]], exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)


class _UnitFailed(Exception):
    """A unit raised during the optimistic pass; the batch is replayed with savepoints."""
