"""The group-commit writer: the one thread per process that writes.

The daemon hands it one *unit of work* per request (for an issuance: the certificate row and its
audit record), and the writer commits many units in one durable transaction, each inside its own
savepoint so one failing unit (say, a duplicate request) does not take the others with it. A client
only gets its certificate after the commit, so a killed process never loses a certificate a client
holds. Writers of several processes on one SQLite file take turns through a file lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
)
from sqlalchemy.engine import Connection, Engine

from ckms_app.store.chain import (
    append_audit,
    insert_into,
)
from ckms_app.store.driver_writes import DriverBatches
from ckms_app.store.schema import (
    audit_events,
)

T = TypeVar("T")


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
        self.driver_commits = 0  # of ``commits``, those made by the driver-level fast path
        self._driver = DriverBatches(engine)  # batches of plain inserts skip SQLAlchemy's per-commit cost
        self._thread.start()

    def run(self, unit: Callable[[Connection], T]) -> T:
        result: T = self._enqueue(unit).result()
        return result

    async def submit(self, unit: Callable[[Connection], T]) -> T:
        return await asyncio.wrap_future(self._enqueue(unit))

    def _enqueue(self, unit: Callable[[Connection], Any]) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the database writer is closed")
        fut: Future[Any] = Future()
        self._queue.put((unit, fut))
        return fut

    @property
    def thread(self) -> threading.Thread:
        """The commit thread (its CPU is the benchmark's commit stage)."""
        return self._thread

    def close(self) -> None:
        """Finish every queued unit, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._driver.close()
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
        # Fastest: a batch of plain inserts (issuances, audit records) on the driver's connection.
        # Optimistic: the whole batch in one transaction without savepoints (the common case).
        # If any unit fails, undo everything and replay the batch with one savepoint per unit,
        # so only the failing unit is lost. Units are pure functions of the connection, so a
        # replay is safe.
        try:
            results = self._run_driver_batch(batch)
            if results is None:
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

    def _run_driver_batch(
        self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]]
    ) -> list[tuple[Future[Any], bool, Any]] | None:
        """A batch of ``Inserts`` only, through :class:`DriverBatches`; None when the batch holds
        other units or failed (then nothing was committed and SQLAlchemy replays it)."""
        rows: dict[Table, list[dict[str, Any]]] = {}
        for unit, _ in batch:
            if not isinstance(unit, Inserts):
                return None
            for table, row in unit.rows:
                rows.setdefault(table, []).append(row)
        try:
            with self._turn():
                self._driver.write(rows)
        except Exception:  # noqa: BLE001 - replayed through SQLAlchemy, which isolates the culprit
            return None
        self.driver_commits += 1
        return [(fut, True, None) for _, fut in batch]

    def _run_batch(
        self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]], isolate: bool
    ) -> list[tuple[Future[Any], bool, Any]]:
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
    def _run_optimistic(
        conn: Connection, batch: list[tuple[Unit, Future[Any]]], results: list[tuple[Future[Any], bool, Any]]
    ) -> None:
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
