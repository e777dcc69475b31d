"""Hot-path point reads: always the latest commit, no snapshot held, survive a dropped connection.

Real SQLite (WAL, a second process-like writer engine) and the suite's real PostgreSQL server.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import bindparam, select, update

from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.point_reads import PointReader
from ckms_app.store.schema import certificates, security_state, utcnow
from ckms_app.store.writer import GroupCommitWriter, Inserts


def _cert_row(serial: str, csr_hash: str) -> dict:
    now = utcnow()
    return {
        "serial": serial,
        "kind": "end-entity",
        "profile": "device",
        "subject": f"CN={serial}",
        "sans": "",
        "not_before": now,
        "not_after": now,
        "issued_at": now,
        "requested_by": "t",
        "csr_sha256": csr_hash,
        "pubkey_sha256": "0" * 64,
        "status": "valid",
        "der": b"\x30\x03\x02\x01" + serial.encode()[:1],
    }


def _exercise(url: str) -> None:
    reader_engine = open_engine(url)
    migrate(reader_engine)
    writer = GroupCommitWriter(open_engine(url, writer=True))
    reads = PointReader(reader_engine)
    try:
        der_for = reads.prepare(select(certificates.c.der).where(certificates.c.csr_sha256 == bindparam("h")))
        generation = reads.prepare(
            select(security_state.c.value).where(security_state.c.name == "entity_generation")
        )
        assert reads.first(der_for, h="a" * 64) is None
        before = int(reads.first(generation)[0])  # type: ignore[index]

        # Each read sees commits made since the previous one (autocommit: no snapshot is kept).
        writer.run(Inserts(((certificates, _cert_row("1a", "a" * 64)),)))
        found = reads.first(der_for, h="a" * 64)
        assert found is not None and bytes(found[0]) == b"\x30\x03\x02\x011"
        writer.run(
            lambda c: c.execute(
                update(security_state)
                .where(security_state.c.name == "entity_generation")
                .values(value=security_state.c.value + 1)
            )
        )
        assert int(reads.first(generation)[0]) == before + 1  # type: ignore[index]

        # A dropped connection is replaced transparently on the next read.
        reads._raw.driver_connection.close()  # type: ignore[union-attr]
        assert reads.first(der_for, h="a" * 64) is not None
        assert reads.all(der_for, h="b" * 64) == []
    finally:
        reads.close()
        writer.close()
        reader_engine.dispose()


def test_point_reads_on_sqlite(tmp_path: Path) -> None:
    _exercise(f"sqlite:///{tmp_path / 'ckms.sqlite3'}")


def test_point_reads_on_postgresql(postgres) -> None:  # type: ignore[no-untyped-def]
    _exercise(postgres.create_database("ckms_point_reads"))
