"""The group-commit writer's fast path: batches of plain inserts on the writer's own driver connection.

Why: an issuance is one certificate row and one audit record, and the writer commits many issuances
at once. Through SQLAlchemy each commit costs about half a millisecond of Python (checkout, BEGIN
through the event hooks, statement cache lookups, parameter processing per row, result objects,
COMMIT), which at thousands of issuances per second is a large share of two cores. The same
transaction on the driver's connection (the statements compiled once by SQLAlchemy for the dialect,
the columns' own bind processors applied to each value) costs a fraction of it.

Exactly the same rows and the same audit chain as :func:`ckms_app.store.chain.append_audit`: the chain
head is read with the same lock (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE on PostgreSQL), the
records get their sequence numbers and hashes from :func:`~ckms_app.store.chain.chain_records`, and the
head is updated in the same transaction. Any failure rolls the transaction back and the writer replays
the batch through SQLAlchemy, where a failing unit is isolated in its savepoint and gets the usual
SQLAlchemy exception: this path only ever makes a batch cheaper, never different.

Not thread-safe: the writer thread alone uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from ckms_app.store.chain import (
    _CHAIN_HEAD_FOR_UPDATE,
    _CHAIN_HEAD_UPDATE,
    chain_records,
)
from ckms_app.store.engine import take_write_lock
from ckms_app.store.schema import audit_events


@dataclass(frozen=True)
class _Prepared:
    """One statement for the dialect: its SQL and how to turn a row into the driver's parameters."""

    sql: str
    names: tuple[str, ...]
    positional: bool
    processors: tuple[Callable[[Any], Any] | None, ...]
    defaults: Mapping[str, Any]  # the statement's own literals (e.g. chain_id = 1)

    def parameters(self, row: Mapping[str, Any]) -> Any:
        values = [
            (row[name] if name in row else self.defaults[name])
            if proc is None
            else proc(row[name] if name in row else self.defaults[name])
            for name, proc in zip(self.names, self.processors, strict=True)
        ]
        return tuple(values) if self.positional else dict(zip(self.names, values, strict=True))


class DriverBatches:
    """Runs batches of inserts (audit records chained first) in one driver-level transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._sqlite = engine.dialect.name == "sqlite"
        self._raw: Any = None
        self._inserts: dict[tuple[str, tuple[str, ...]], _Prepared] = {}
        self._head_select = self._prepare(_CHAIN_HEAD_FOR_UPDATE, None)
        self._head_update = self._prepare(_CHAIN_HEAD_UPDATE, None)

    def write(self, rows_by_table: Mapping[Table, Sequence[dict[str, Any]]]) -> None:
        """Commit every row durably, or raise with nothing committed."""
        raw = self._connection()
        cursor = raw.cursor()
        try:
            self._begin(cursor)
            audit = rows_by_table.get(audit_events)
            if audit:  # the chain head first: the lock order of every writer
                cursor.execute(self._head_select.sql, self._head_select.parameters({}))
                head = cursor.fetchone()
                if head is None:
                    raise RuntimeError("the audit chain head is missing: run the database migrations")
                chained, seq, prev = chain_records(int(head[0]), head[1], list(audit))
                self._insert(cursor, audit_events, chained)
                update = self._head_update
                cursor.execute(update.sql, update.parameters({"new_seq": seq, "new_hash": prev}))
            for table, rows in rows_by_table.items():
                if table is not audit_events and rows:
                    self._insert(cursor, table, rows)
            if self._sqlite:
                cursor.execute("COMMIT")
            else:
                raw.commit()
        except BaseException:
            self._abandon(cursor)
            raise
        cursor.close()

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.invalidate()  # never back into the pool: its transaction state is ours

    def _insert(self, cursor: Any, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        names = tuple(rows[0])
        key = (table.name, names)
        prepared = self._inserts.get(key)
        if prepared is None:
            prepared = self._inserts[key] = self._prepare(table.insert(), names)
        cursor.executemany(prepared.sql, [prepared.parameters(row) for row in rows])

    def _prepare(self, statement: ClauseElement, columns: tuple[str, ...] | None) -> _Prepared:
        compiled = statement.compile(dialect=self._dialect, column_keys=list(columns) if columns else None)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
        binds = compiled.binds  # each column's own conversion (UTC datetimes, ...) comes with its type
        return _Prepared(
            compiled.string,
            names,
            compiled.positional,
            tuple(binds[name].type.bind_processor(self._dialect) for name in names),
            dict(compiled.params),
        )

    def _connection(self) -> Any:
        if self._raw is None:
            self._raw = self._engine.raw_connection()
        return self._raw

    def _begin(self, cursor: Any) -> None:
        if self._sqlite:  # psycopg opens the transaction with the first statement
            take_write_lock(cursor.execute)

    def _abandon(self, cursor: Any) -> None:
        """Roll back; a connection that cannot even do that is dropped and reopened next time."""
        try:
            if self._sqlite:
                if not self._raw.driver_connection.in_transaction:
                    return
                cursor.execute("ROLLBACK")
            else:
                self._raw.rollback()
            cursor.close()
        except Exception:  # noqa: BLE001 - the connection is unusable: start afresh
            self.close()
