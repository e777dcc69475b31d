"""The group-commit writer: durable batches, one failing unit does not take others down."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ckms_app.store.chain import audit_row
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import audit_events, certificates, utcnow
from ckms_app.store.writer import GroupCommitWriter, Inserts


def cert_row(serial: str, csr_hash: str | None = None) -> dict:
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
        "der": b"\x30\x00",
    }


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'ckms.sqlite3'}"
    reader = open_engine(url)
    assert migrate(reader) >= 1
    assert migrate(reader) >= 1  # idempotent
    writer = GroupCommitWriter(open_engine(url, writer=True))
    yield reader, writer
    writer.close()
    reader.dispose()


def count(reader, table) -> int:  # type: ignore[no-untyped-def]
    with reader.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_concurrent_units_are_grouped_and_all_land(db) -> None:  # type: ignore[no-untyped-def]
    reader, writer = db
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            writer.run(
                Inserts(
                    (
                        (certificates, cert_row(f"{i:x}")),
                        (
                            audit_events,
                            audit_row(
                                entity_id="t",
                                role="operator",
                                action="certificate.issue",
                                target=f"{i:x}",
                                outcome="success",
                            ),
                        ),
                    )
                )
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(1, 301)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(reader, certificates) == 300 and count(reader, audit_events) == 300
    assert writer.commits < writer.units  # batching happened


def test_a_failing_unit_is_isolated_by_savepoint(db) -> None:  # type: ignore[no-untyped-def]
    reader, writer = db
    writer.run(Inserts(((certificates, cert_row("aa", "h1")),)))
    futures = [
        writer._enqueue(Inserts(((certificates, cert_row("bb")),))),
        writer._enqueue(Inserts(((certificates, cert_row("cc", "h1")),))),  # duplicate CSR hash
        writer._enqueue(Inserts(((certificates, cert_row("dd")),))),
    ]
    assert futures[0].result() is None and futures[2].result() is None
    with pytest.raises(IntegrityError):
        futures[1].result()
    with reader.connect() as conn:
        serials = {r[0] for r in conn.execute(select(certificates.c.serial))}
    assert serials == {"aa", "bb", "dd"}


def test_naive_datetimes_are_refused(db) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    _, writer = db
    row = cert_row("ee")
    row["issued_at"] = dt.datetime(2026, 1, 1)
    with pytest.raises(Exception, match="naive"):
        writer.run(Inserts(((certificates, row),)))


def test_times_come_back_aware_utc(db) -> None:  # type: ignore[no-untyped-def]
    reader, writer = db
    writer.run(Inserts(((certificates, cert_row("ff")),)))
    with reader.connect() as conn:
        issued = conn.execute(select(certificates.c.issued_at)).scalar()
    assert issued.tzinfo is not None and issued.utcoffset().total_seconds() == 0


def test_closed_writer_refuses_new_work(db) -> None:  # type: ignore[no-untyped-def]
    _, writer = db
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.run(Inserts(((certificates, cert_row("ab")),)))


def test_migration_2_seeds_the_default_acl_as_released() -> None:
    """The frozen copy in the migration equals the live default with migration 3 applied; if the
    default changes, a new migration must carry the change (this test then tells whoever changed it)."""
    from ckms_app.authority.rbac import DEFAULT_ACL
    from ckms_app.store.migrations import _MIGRATION_2_ACL, _MIGRATION_4_ACL

    revoke_by_kind = {
        ("operator", "certificate.revoke", "kind:end-entity"),
        ("administrator", "certificate.revoke", "kind:identity"),
        ("administrator", "certificate.revoke", "kind:tls-server"),
    }
    # migration 3 replaced the operators' revoke-anything grant by grants per certificate kind;
    # migration 4 made the authority the approver of two-person changes
    assert set(_MIGRATION_2_ACL) - {("operator", "certificate.revoke", "*")} | revoke_by_kind | set(
        _MIGRATION_4_ACL
    ) == set(DEFAULT_ACL)


def _rows(reader, table) -> list[tuple]:  # type: ignore[no-untyped-def]
    with reader.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def test_driver_fast_path_writes_what_sqlalchemy_writes(tmp_path: Path) -> None:
    """The same units through the driver-level fast path and through SQLAlchemy (the fast path made to
    fail, so the batch is replayed): identical certificate rows, audit records, chain hashes and head."""
    from ckms_app.store.schema import audit_chain_head

    fixed = utcnow()
    units = []
    for i in range(1, 41):
        row = cert_row(f"{i:x}", f"h{i}") | {"not_before": fixed, "not_after": fixed, "issued_at": fixed}
        audit = audit_row(
            entity_id="t", role="operator", action="certificate.issue", target=f"{i:x}", outcome="success"
        )
        units.append(Inserts(((certificates, row), (audit_events, audit | {"at": fixed}))))
    results = []
    for name, broken in (("fast", False), ("replayed", True)):
        url = f"sqlite:///{tmp_path / name}.sqlite3"
        reader = open_engine(url)
        migrate(reader)
        writer = GroupCommitWriter(open_engine(url, writer=True))
        if broken:
            writer._driver.write = lambda rows: (_ for _ in ()).throw(RuntimeError("forced"))  # type: ignore[method-assign]
        futures = [writer._enqueue(u) for u in units]
        assert all(f.result() is None for f in futures)
        assert (writer.driver_commits > 0) is not broken
        writer.close()
        results.append(tuple(_rows(reader, t) for t in (certificates, audit_events, audit_chain_head)))
        reader.dispose()
    assert len(results[0][0]) == 40 and len(results[0][1]) == 40
    assert results[0] == results[1]


def test_fast_path_failure_leaves_nothing_and_isolates_the_culprit(db) -> None:  # type: ignore[no-untyped-def]
    """A duplicate in a batch of plain inserts: the driver transaction rolls back whole, the replay keeps
    the good units and gives the bad one SQLAlchemy's IntegrityError; the chain stays unbroken."""
    from ckms_app.audit.verify import verify_database

    reader, writer = db
    writer.run(Inserts(((certificates, cert_row("aa", "h1")),)))
    audit = {"entity_id": "t", "role": "operator", "action": "certificate.issue", "outcome": "success"}
    futures = [
        writer._enqueue(
            Inserts(((certificates, cert_row(s, h)), (audit_events, audit_row(target=s, **audit))))
        )
        for s, h in (("bb", "h2"), ("cc", "h1"), ("dd", "h3"))
    ]
    assert futures[0].result() is None and futures[2].result() is None
    with pytest.raises(IntegrityError):
        futures[1].result()
    assert {r[0] for r in _rows(reader, certificates)} == {"aa", "bb", "dd"}
    assert [r[5] for r in _rows(reader, audit_events)] == ["bb", "dd"]
    assert verify_database(reader, None).ok
