"""Point reads for the per-request hot path over one long-lived driver connection.

Every issuance asks the database two small questions (has this exact request been answered
already? has any entity or grant changed?). Through a pooled SQLAlchemy connection each costs
about 0.2-0.3 ms of Python (checkout, BEGIN, statement cache, result proxy, ROLLBACK); the same
indexed SELECT on the driver's own connection costs under 10 µs. At hundreds of issuances per
second on two cores that difference is a large share of the CPU budget.

The connection runs in autocommit mode, so each read sees the latest commit of any process or
node and holds no snapshot between reads (cursors are always fully fetched and closed, or SQLite
would keep the WAL read transaction open). The statements are SQLAlchemy Core, compiled once for
the engine's dialect, so the SQL is the same on SQLite and PostgreSQL. Results are the driver's
raw values: use it only for columns that need no type processing (text, integers, bytes).

Not thread-safe: one instance per thread (the daemon uses it from its event-loop thread only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select


@dataclass(frozen=True)
class PreparedRead:
    """One SELECT compiled for a dialect: the SQL text and how to lay out its parameters."""

    sql: str
    positional: tuple[str, ...] | None  # parameter order for qmark/format dialects; None: named
    defaults: Mapping[str, Any]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.defaults, **values}
        if self.positional is None:
            return merged
        return tuple(merged[name] for name in self.positional)


class PointReader:
    """Runs prepared SELECTs on one autocommit driver connection, reconnecting once if it dropped."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._raw: Any = None

    def prepare(self, statement: Select[*tuple[Any, ...]]) -> PreparedRead:
        compiled = statement.compile(dialect=self._engine.dialect)
        positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        return PreparedRead(compiled.string, positional, dict(compiled.params))

    def all(self, prepared: PreparedRead, **values: Any) -> list[tuple[Any, ...]]:
        parameters = prepared.parameters(values)
        try:
            return self._fetch(prepared.sql, parameters)
        except Exception:  # noqa: BLE001 - a dropped connection: one retry on a fresh one
            self.close()
            return self._fetch(prepared.sql, parameters)

    def first(self, prepared: PreparedRead, **values: Any) -> tuple[Any, ...] | None:
        rows = self.all(prepared, **values)
        return rows[0] if rows else None

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.invalidate()  # never back into the pool: its session settings differ

    def _fetch(self, sql: str, parameters: Any) -> list[tuple[Any, ...]]:
        if self._raw is None:
            raw = self._engine.raw_connection()
            if self._engine.dialect.name != "sqlite":  # pysqlite connections are autocommit already
                driver = raw.driver_connection
                if driver is None:  # only a detached or closed proxy has none, never a fresh checkout
                    raise RuntimeError("the pool returned a connection without a driver connection")
                driver.autocommit = True
            self._raw = raw
        cursor = self._raw.cursor()
        try:
            cursor.execute(sql, parameters)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
