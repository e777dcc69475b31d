"""The audit hash chain and its seals: clean trails verify, every kind of tampering is named.

Runs against real SQLite (and PostgreSQL for concurrent writers). The HSM audit key is stood in
for by a software key with the same ``sign`` interface; the integration tests use the token.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, select, update

from ckms_app.algorithms import CURVES
from ckms_app.audit import seal_log
from ckms_app.audit.seals import seal_and_log, seal_unit
from ckms_app.audit.verify import export_lines, verify_database, verify_export
from ckms_app.authority.passwords import hash_password, read_password, verify_password
from ckms_app.authority.rbac import CONFLICTING_ROLES, ROLES, Principal, role_conflicts
from ckms_app.config import AuditConfig
from ckms_app.errors import AuditBypass, ExportError, PasswordError
from ckms_app.store.chain import append_audit, audit_row
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import audit_chain_head, audit_events, audit_seals
from ckms_app.store.writer import GroupCommitWriter, Inserts


@dataclass
class SoftAuditKey:
    """Same surface as HsmEcPrivateKey for seal_unit: sign, curve_info, label."""

    key: ec.EllipticCurvePrivateKey
    label: str = "test-audit-key"
    curve_info = CURVES["P-256"]

    def sign(self, data: bytes, algorithm: ec.ECDSA) -> bytes:
        return self.key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()


def event(i: int, action: str = "certificate.issue") -> dict:
    return audit_row(
        entity_id=f"op-{i % 3}",
        role="operator",
        action=action,
        target=f"{i:x}",
        outcome="success",
        detail={"n": i},
    )


@pytest.fixture
def trail(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A database with 30 chained records (batched, single and unit-written), sealed at 20."""
    url = f"sqlite:///{tmp_path / 'ckms.sqlite3'}"
    reader = open_engine(url)
    migrate(reader)
    writer = GroupCommitWriter(open_engine(url, writer=True))
    key = SoftAuditKey(ec.generate_private_key(ec.SECP256R1()))
    futures = [writer._enqueue(Inserts(((audit_events, event(i)),))) for i in range(10)]  # one batch
    for f in futures:
        f.result()
    for i in range(10, 19):
        writer.run(lambda c, i=i: append_audit(c, [event(i)]))
    writer.run(seal_unit(key))  # seals 1..19, records itself as 20
    for i in range(21, 31):
        writer.run(Inserts(((audit_events, event(i)),)))
    writer.close()
    yield reader, key, tmp_path / "ckms.sqlite3"
    reader.dispose()


def sql(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for s in statements:
            db.execute(s)


def test_untouched_trail_verifies(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, _ = trail
    report = verify_database(reader, key.public_key())
    assert report.ok, report
    assert (report.records, report.seals, report.last_seq, report.unsealed_records) == (30, 1, 30, 11)


@pytest.mark.parametrize(
    "statement, first_bad",
    [
        ("UPDATE audit_events SET target='forged' WHERE seq=7", 7),
        ("UPDATE audit_events SET outcome='denied' WHERE seq=25", 25),
        ("UPDATE audit_events SET at='2020-01-01 00:00:00.000000' WHERE seq=3", 3),
        ("DELETE FROM audit_events WHERE seq=12", 12),
    ],
)
def test_edit_and_delete_are_named(trail, statement: str, first_bad: int) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    sql(path, statement)
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == first_bad, report


def test_reordering_is_named(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    sql(
        path,
        "UPDATE audit_events SET seq=-1 WHERE seq=5",
        "UPDATE audit_events SET seq=5 WHERE seq=6",
        "UPDATE audit_events SET seq=6 WHERE seq=-1",
    )
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 5, report


def test_insertion_in_the_middle_is_named(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    with sqlite3.connect(path) as db:
        for seq in range(30, 8, -1):
            db.execute("UPDATE audit_events SET seq=? WHERE seq=?", (seq + 1, seq))
        db.execute(
            "INSERT INTO audit_events (seq, at, entity_id, role, action, target, outcome, detail, chain_hash) "
            "SELECT 9, at, 'mallory', 'operator', 'certificate.issue', 'ff', 'success', '{}', chain_hash "
            "FROM audit_events WHERE seq=8"
        )
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 9, report


def test_appended_record_without_the_chain_head_is_named(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    sql(
        path,
        "INSERT INTO audit_events (seq, at, entity_id, role, action, target, outcome, detail, chain_hash) "
        "VALUES (31, '2026-01-01 00:00:00.000000', 'mallory', 'operator', 'x', 'y', 'success', '{}', 'ab')",
    )
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 31, report


def test_deleted_tail_is_named(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    sql(path, "DELETE FROM audit_events WHERE seq > 27")
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 28, report


def test_recomputed_chain_is_caught_by_the_hsm_seal(trail) -> None:  # type: ignore[no-untyped-def]
    """Someone with write access edits record 4 and recomputes every later hash and the head."""
    from ckms_app.audit.verify import _record_dict
    from ckms_app.store.chain import GENESIS_HASH, audit_record_hash

    reader, key, path = trail
    sql(path, "UPDATE audit_events SET target='forged' WHERE seq=4")
    with reader.connect() as conn:
        rows = [
            _record_dict(r)
            for r in conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings()
        ]
    prev = GENESIS_HASH
    with sqlite3.connect(path) as db:
        for r in rows:
            prev = audit_record_hash(prev, r)
            db.execute("UPDATE audit_events SET chain_hash=? WHERE seq=?", (prev, r["seq"]))
        db.execute("UPDATE audit_chain_head SET last_hash=?", (prev,))
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 1 and "sealed" in report.problem, report


def test_forged_or_deleted_seal_is_named(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    sql(path, "UPDATE audit_seals SET signature=X'3006020101020101'")
    report = verify_database(reader, key.public_key())
    assert not report.ok and "signature" in report.problem
    sql(path, "DELETE FROM audit_seals")
    report = verify_database(reader, key.public_key())
    assert not report.ok and report.first_bad_seq == 20 and "seal" in report.problem, report


def test_export_verifies_and_an_edited_export_is_named(trail, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reader, key, _ = trail
    lines = list(export_lines(reader, key.public_key(), "test CA"))
    assert verify_export(lines, key.public_key()).ok
    edited = [json.loads(line) for line in lines]
    victim = next(i for i, item in enumerate(edited) if item.get("seq") == 14)
    edited[victim]["entity_id"] = "someone-else"
    report = verify_export([json.dumps(i) for i in edited], key.public_key())
    assert not report.ok and report.first_bad_seq == 14
    dropped = [line for line in lines if json.loads(line).get("seq") != 22]
    assert verify_export(dropped, key.public_key()).first_bad_seq == 22
    swapped = list(lines)
    a, b = (next(i for i, line in enumerate(lines) if json.loads(line).get("seq") == s) for s in (16, 17))
    swapped[a], swapped[b] = swapped[b], swapped[a]
    assert verify_export(swapped, key.public_key()).first_bad_seq == 16
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert not verify_export(lines, other_key).ok  # seals checked against the key from the token/home


def test_direct_insert_bypassing_the_chain_is_refused(trail) -> None:  # type: ignore[no-untyped-def]
    reader, _, path = trail
    writer = GroupCommitWriter(open_engine(f"sqlite:///{path}", writer=True))
    try:
        with pytest.raises(AuditBypass):
            writer.run(lambda c: c.execute(audit_events.insert(), {**event(99), "seq": 99}))
    finally:
        writer.close()


def test_a_failed_unit_leaves_no_gap_in_the_chain(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, path = trail
    writer = GroupCommitWriter(open_engine(f"sqlite:///{path}", writer=True))

    def failing(conn):  # type: ignore[no-untyped-def]
        append_audit(conn, [event(100)])
        raise ValueError("unit fails after writing its audit record")

    try:
        futures = [
            writer._enqueue(Inserts(((audit_events, event(101)),))),
            writer._enqueue(failing),
            writer._enqueue(Inserts(((audit_events, event(102)),))),
        ]
        futures[0].result(), futures[2].result()
        with pytest.raises(ValueError):
            futures[1].result()
    finally:
        writer.close()
    report = verify_database(reader, key.public_key())
    assert report.ok and report.last_seq == 32, report


def _hammer(url: str, worker: int, count: int) -> None:
    writer = GroupCommitWriter(open_engine(url, writer=True))
    threads = [
        threading.Thread(
            target=lambda i=i: writer.run(Inserts(((audit_events, event(worker * 10_000 + i)),)))
        )
        for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()


def _concurrent_writers(url: str) -> None:
    reader = open_engine(url)
    migrate(reader)
    reader.dispose()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(url, w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reader = open_engine(url)
    report = verify_database(reader, None)
    reader.dispose()
    assert report.ok and report.records == 450, report


def test_writer_processes_on_sqlite_make_one_chain(tmp_path: Path) -> None:
    _concurrent_writers(f"sqlite:///{tmp_path / 'ckms.sqlite3'}")


def test_writer_processes_on_postgresql_make_one_chain(postgres) -> None:  # type: ignore[no-untyped-def]
    _concurrent_writers(postgres.create_database("ckms_audit_chain"))


# --- separation of duties and passwords ------------------------------------------------------------
def test_every_pair_of_the_four_roles_conflicts() -> None:
    assert len(CONFLICTING_ROLES) == 6
    for role in ROLES:
        assert role_conflicts([r for r in ROLES if r != role], role) == sorted(r for r in ROLES if r != role)
        assert role_conflicts([role], role) == []


def test_default_acl_permission_matrix() -> None:
    operator, admin, auditor = (
        Principal("o", "operator"),
        Principal("a", "administrator"),
        Principal("u", "auditor"),
    )
    assert operator.allows("certificate.issue", "profile:device") and operator.allows("certificate.revoke")
    assert not operator.allows("certificate.issue", "profile:identity")
    assert not operator.allows("entity.manage") and not operator.allows("audit.read")
    assert (
        admin.allows("entity.manage")
        and admin.allows("acl.manage")
        and admin.allows("key.manage", "key:ckms-ca-key")
    )
    assert not admin.allows("certificate.issue") and not admin.allows("audit.read")
    assert auditor.allows("audit.export") and not auditor.allows("certificate.issue")


def test_passwords_are_scrypt_hashed_and_checked(tmp_path: Path) -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$32768$8$1$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("wrong horse battery", stored) and not verify_password("x", None)
    with pytest.raises(PasswordError):
        hash_password("short")
    f = tmp_path / "pw"
    f.write_text("from a file\n")
    f.chmod(0o644)
    with pytest.raises(PasswordError, match="chmod 600"):
        read_password(f)
    f.chmod(0o600)
    assert read_password(f) == "from a file"


# --- a cut tail: records, newest seals and the chain head removed together -------------------------
def _sealed_trail_with_log(url: str, seal_log_path: Path) -> tuple[SoftAuditKey, int]:
    """Records sealed twice; each seal also appended to the seal log. Returns the key and the first
    seal's up_to_seq (where the cut goes)."""
    reader = open_engine(url)
    migrate(reader)
    reader.dispose()
    writer = GroupCommitWriter(open_engine(url, writer=True))
    key = SoftAuditKey(ec.generate_private_key(ec.SECP256R1()))
    config = AuditConfig(seal_log=seal_log_path, seal_syslog=False)
    try:
        for i in range(12):
            writer.run(Inserts(((audit_events, event(i)),)))
        first = seal_and_log(writer, key, config)  # type: ignore[arg-type]
        for i in range(12, 30):
            writer.run(Inserts(((audit_events, event(i)),)))
        seal_and_log(writer, key, config)  # type: ignore[arg-type]
        for i in range(30, 33):
            writer.run(Inserts(((audit_events, event(i)),)))
    finally:
        writer.close()
    assert first is not None
    return key, int(first["up_to_seq"])


def _cut_tail(url: str, keep_up_to: int) -> None:
    """What someone with write access to the database does to hide the newest events: a consistent,
    shorter trail (tail records, the seals over them and the chain head moved back)."""
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            keep_hash = conn.execute(
                select(audit_events.c.chain_hash).where(audit_events.c.seq == keep_up_to)
            ).scalar()
            conn.execute(delete(audit_events).where(audit_events.c.seq > keep_up_to))
            conn.execute(delete(audit_seals).where(audit_seals.c.up_to_seq > keep_up_to))
            conn.execute(update(audit_chain_head).values(last_seq=keep_up_to, last_hash=keep_hash))
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_cut_tail_is_named_by_the_seal_log(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ckms.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres").create_database("ckms_cut_tail")
    log_path = tmp_path / "log" / "audit-seals.jsonl"
    key, first_seal = _sealed_trail_with_log(url, log_path)
    external = seal_log.read(log_path)
    assert len(external) == 2 and log_path.stat().st_mode & 0o777 == 0o600
    reader = open_engine(url)
    try:
        assert verify_database(reader, key.public_key(), external_seals=external).ok
        _cut_tail(url, first_seal)
        # The database alone is consistent: this is why the seals are also kept outside it.
        alone = verify_database(reader, key.public_key())
        assert alone.ok and alone.last_seq == first_seal
        report = verify_database(reader, key.public_key(), external_seals=external)
        assert not report.ok and "missing tail" in (report.problem or "")
        assert (
            f"records {first_seal + 1}.." in (report.problem or "") and report.first_bad_seq == first_seal + 1
        )
        # Without the log at all (deleted with the tail) the check fails too.
        gone = verify_database(reader, key.public_key(), external_seals=[])
        assert not gone.ok and "seal log" in (gone.problem or "")
    finally:
        reader.dispose()


def test_an_edited_seal_log_is_named(trail, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reader, key, _ = trail
    with reader.connect() as conn:
        seals = [dict(r) for r in conn.execute(select(audit_seals)).mappings()]
    log_path = tmp_path / "seals.jsonl"
    seal_log.append(log_path, seals[0], to_syslog=False)
    assert verify_database(reader, key.public_key(), external_seals=seal_log.read(log_path)).ok
    line = json.loads(log_path.read_text())
    line["chain_hash"] = "0" * 64
    log_path.write_text(json.dumps(line) + "\n")
    report = verify_database(reader, key.public_key(), external_seals=seal_log.read(log_path))
    assert not report.ok and "bad signature" in (report.problem or "")
    log_path.write_text("not a seal\n")
    with pytest.raises(ExportError, match="line 1"):
        seal_log.read(log_path)


def test_a_stale_newest_seal_fails_verification(trail) -> None:  # type: ignore[no-untyped-def]
    reader, key, _ = trail
    with reader.connect() as conn:
        sealed_at = conn.execute(select(audit_seals.c.sealed_at)).scalar()
    fresh = verify_database(reader, key.public_key(), max_seal_age_seconds=360, now=sealed_at)
    assert fresh.ok
    later = sealed_at + dt.timedelta(seconds=361)
    stale = verify_database(reader, key.public_key(), max_seal_age_seconds=360, now=later)
    assert (
        not stale.ok and "361 s old" in (stale.problem or "") and "sealing stopped" in (stale.problem or "")
    )
