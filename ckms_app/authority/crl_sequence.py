"""The CRL-number lock: CRL numbers strictly increasing in commit order across worker processes and CA nodes.

A publication holds the lock from picking its number until its rows are committed: on PostgreSQL a
transaction-scoped advisory lock that every node sees, on SQLite (one host) a lock file next to the
database. Neither holds up issuance. See :mod:`ckms_app.authority.crl_publisher` for why."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, make_url

from ckms_app.store.writer import GroupCommitWriter

T = TypeVar("T")


# pg_advisory_xact_lock key of the CRL-number sequence ("ckms_crl" in ASCII); one lock per database.
CRL_LOCK_KEY = 0x636B6D735F63726C


class PostgresSequence:
    """The CRL-number lock on PostgreSQL: ``pg_advisory_xact_lock`` in a transaction of its own.

    Reads and the final insert run in that transaction, so the lock is held from picking the number
    until the commit and released by it, on whichever node. It blocks nothing but other publishers.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @classmethod
    def acquire(cls, engine: Engine) -> PostgresSequence:
        conn = engine.connect()
        try:
            conn.begin()
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CRL_LOCK_KEY})
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    async def read(self, query: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(query, self._conn)

    async def store(self, unit: Callable[[Connection], Any]) -> None:
        def run() -> None:
            unit(self._conn)
            self._conn.commit()

        await asyncio.to_thread(run)

    async def release(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        try:
            self._conn.rollback()  # nothing to undo after store(); ends the transaction otherwise
        finally:
            self._conn.close()


class SqliteSequence:
    """The CRL-number lock on SQLite: an exclusive ``flock`` on ``<database>.crl-lock``.

    SQLite serves one host, so a lock file orders its worker processes. Reads see every commit made
    before the lock was taken, and the insert goes through the durable group-commit writer before the
    lock is let go; the database write lock is held only for that commit, as for any write.
    """

    def __init__(self, lock_fd: int | None, reader: Engine, writer: GroupCommitWriter) -> None:
        self._lock_fd = lock_fd
        self._reader = reader
        self._writer = writer

    @classmethod
    def acquire(cls, url: str, reader: Engine, writer: GroupCommitWriter) -> SqliteSequence:
        database = make_url(url).database
        lock_fd = None
        if database and database != ":memory:":  # an in-memory database has a single connection anyway
            lock_fd = os.open(f"{database}.crl-lock", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(lock_fd)
                raise
        return cls(lock_fd, reader, writer)

    async def read(self, query: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self._reader.connect() as conn:
                return query(conn)

        return await asyncio.to_thread(run)

    async def store(self, unit: Callable[[Connection], Any]) -> None:
        await self._writer.submit(unit)

    async def release(self) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the file releases the flock
            self._lock_fd = None


def close_if_acquired(acquiring: asyncio.Future[PostgresSequence | SqliteSequence]) -> None:
    if not acquiring.cancelled() and acquiring.exception() is None:
        acquiring.result().close()
