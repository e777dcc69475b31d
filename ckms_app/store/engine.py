"""Database engines: SQLite (WAL, ``synchronous=FULL``: durable at commit, also across power loss) by
default, PostgreSQL for several CA nodes.

Readers use deferred transactions; the one writer thread of a process takes SQLite's write lock up
front and retries it itself instead of relying on the busy handler's long back-off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Engine


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
        take_write_lock(conn.exec_driver_sql)

    return engine


_WRITE_LOCK_TIMEOUT = 30.0


def take_write_lock(execute: Callable[[str], object]) -> None:
    """SQLite's BEGIN IMMEDIATE, retried every millisecond while another writer holds the lock (up to
    30 s); ``execute`` runs one SQL statement (SQLAlchemy's connection or the driver's cursor)."""
    deadline = time.monotonic() + _WRITE_LOCK_TIMEOUT
    while True:
        try:
            execute("BEGIN IMMEDIATE")
            return
        except Exception as exc:  # sqlite3.OperationalError, or SQLAlchemy's wrapping of it
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.001)
