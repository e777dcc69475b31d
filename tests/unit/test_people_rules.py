"""The rules of two-person changes and one-time enrolment codes, on a real (SQLite) store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from ckms_app.audit.record import named
from ckms_app.authority import enrolment, people_changes
from ckms_app.errors import Conflict, SelfGrant, SeparationOfDuties
from ckms_app.store.chain import append_audit
from ckms_app.store.engine import open_engine
from ckms_app.store.migrations import migrate
from ckms_app.store.schema import (
    audit_events,
    enrolment_codes,
    entities,
    entity_roles,
    role_permissions,
    utcnow,
)
from ckms_app.store.writer import GroupCommitWriter


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'ckms.sqlite3'}"
    reader = open_engine(url)
    migrate(reader)
    writer = GroupCommitWriter(open_engine(url, writer=True))
    now = utcnow()

    def seed(conn):  # type: ignore[no-untyped-def]
        append_audit(conn, [])
        for entity_id, role in (("adm", "administrator"), ("boss", "authority"), ("op", "operator")):
            conn.execute(
                entities.insert().values(
                    entity_id=entity_id, role=role, status="active", created_at=now, password_hash=None
                )
            )
            conn.execute(
                entity_roles.insert().values(entity_id=entity_id, role=role, granted_at=now, granted_by="t")
            )
        conn.execute(entities.insert().values(entity_id="new", role="none", status="pending", created_at=now))

    writer.run(seed)
    yield reader, writer
    writer.close()
    reader.dispose()


def test_migration_4_makes_the_authority_the_approver(store) -> None:  # type: ignore[no-untyped-def]
    reader, _ = store
    with reader.connect() as conn:
        rows = set(
            conn.execute(select(role_permissions).where(role_permissions.c.operation == "change.approve"))
        )
    assert {(r.role, r.resource) for r in rows} == {
        ("authority", "kind:entity"),
        ("authority", "kind:role"),
        ("authority", "kind:acl"),
    }


@pytest.mark.parametrize(
    ("kind", "payload", "roles"),
    [
        (
            "acl.grant",
            {"role": "administrator", "operation": "certificate.issue", "resource": "*"},
            {"administrator"},
        ),
        ("entity.grant", {"entity_id": "x", "role": "authority"}, {"authority"}),
        ("entity.create", {"entity_id": "x", "roles": ["administrator"]}, {"administrator"}),
    ],
)
def test_no_self_grant(kind: str, payload: dict, roles: set[str]) -> None:
    with pytest.raises(SelfGrant, match="no self-grant"):
        people_changes.refuse_self_grant(kind, payload, "someone", frozenset(roles))
    people_changes.refuse_self_grant(kind, payload, "someone", frozenset({"auditor"}))  # not theirs: fine


def test_withdrawing_is_not_granting() -> None:
    payload = {"role": "administrator", "operation": "certificate.read", "resource": "*"}
    people_changes.refuse_self_grant("acl.revoke", payload, "adm", frozenset({"administrator"}))


def test_checks_refuse_conflicts_own_grants_and_moot_changes(store) -> None:  # type: ignore[no-untyped-def]
    reader, _ = store
    with reader.connect() as conn:
        with pytest.raises(SeparationOfDuties, match="separation of duties"):
            people_changes.check(conn, "entity.grant", {"entity_id": "op", "role": "auditor"}, "adm")
        with pytest.raises(SeparationOfDuties, match="their own"):
            people_changes.check(conn, "entity.disable", {"entity_id": "adm"}, "adm")
        with pytest.raises(Conflict, match="already exists"):
            people_changes.check(conn, "entity.create", {"entity_id": "op", "roles": ["operator"]}, "adm")
        with pytest.raises(SeparationOfDuties):
            people_changes.check(
                conn, "entity.create", {"entity_id": "two", "roles": ["operator", "auditor"]}, "adm"
            )
        with pytest.raises(Conflict, match="already in the ACL"):
            acl = {"role": "operator", "operation": "certificate.read", "resource": "*"}
            people_changes.check(conn, "acl.grant", acl, "adm")
        assert people_changes.check(conn, "entity.disable", {"entity_id": "op"}, "adm") == {
            "cert_serial": None
        }


def _claim(writer: GroupCommitWriter, entity_id: str, code: str) -> dict:
    return writer.run(lambda conn: enrolment._claim(conn, entity_id, code, "test"))  # noqa: SLF001


def test_a_code_is_hashed_used_once_and_locked_after_five_wrong(store) -> None:  # type: ignore[no-untyped-def]
    reader, writer = store
    code = enrolment.new_code()
    assert len(code) >= 32  # 192 bits, URL-safe base64
    writer.run(lambda conn: enrolment.store_code(conn, "new", code, "adm", 72, utcnow()))
    with reader.connect() as conn:
        stored = conn.execute(select(enrolment_codes)).one()
    assert code not in stored.code_hash and stored.code_hash == enrolment.code_hash(code)
    for _ in range(4):
        assert _claim(writer, "new", "wrong")["refused"]
    assert not _claim(writer, "new", code)["refused"]  # the fifth try is the right one
    assert _claim(writer, "new", code)["refused"]  # once only
    writer.run(lambda conn: enrolment.store_code(conn, "new", code, "adm", 72, utcnow()))  # a fresh one
    for _ in range(5):
        assert _claim(writer, "new", "wrong")["refused"]
    refused = _claim(writer, "new", code)
    assert refused["refused"] and "locked" in json.loads(refused["row"]["detail"])["reason"]
    with reader.connect() as conn:
        details = [json.loads(r.detail) for r in conn.execute(select(audit_events.c.detail))]
    assert all(code not in json.dumps(d) for d in details)


def test_an_expired_or_unknown_code_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    _, writer = store
    code = enrolment.new_code()
    writer.run(
        lambda conn: enrolment.store_code(conn, "new", code, "adm", 1, utcnow() - dt.timedelta(hours=2))
    )
    assert json.loads(_claim(writer, "new", code)["row"]["detail"])["reason"] == "code expired"
    unknown = _claim(writer, "nobody", code)
    assert unknown["refused"] and unknown["row"]["entity_id"] == "unauthenticated"


def test_release_keeps_the_code_usable(store) -> None:  # type: ignore[no-untyped-def]
    _, writer = store
    code = enrolment.new_code()
    writer.run(lambda conn: enrolment.store_code(conn, "new", code, "adm", 72, utcnow()))
    assert not _claim(writer, "new", code)["refused"]
    writer.run(lambda conn: enrolment._release(conn, named("new", "none"), Conflict("x"), "test"))  # noqa: SLF001
    assert not _claim(writer, "new", code)["refused"]
