"""One credential per person, and changes to people, roles and the ACL that need two of them.

Through the real CLI and a real daemon: enrolment with one-time codes (EST and local), two-person
changes (propose, approve, reject), no self-grant, no self-approval, no acting with the token PIN, and
``ckms ca init`` without ``--demo`` writing no person's private key. SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from ckms_lab.throwaway_postgres import PostgresServer

from .conftest import CaHome, Daemon, ckms, free_port, init_home, make_csr, split_status


def as_person(ca: CaHome, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return ckms(
        *args,
        "--home",
        str(ca.home),
        "--as",
        f"demo-{role}",
        "--password-file",
        str(ca.home / "credentials" / f"{role}.password"),
        check=check,
    )


def propose(ca: CaHome, *args: str) -> int:
    out = json.loads(as_person(ca, "administrator", *args).stdout)
    assert out["status"] == "proposed" and out["proposer"] == "demo-administrator", out
    return int(out["change"])


def two_person_code(ca: CaHome, entity_id: str) -> str:
    """A fresh enrolment code the two-person way: the administrator proposes and gets the first half,
    the authority approves and gets the second; neither half alone is the code."""
    proposed = json.loads(as_person(ca, "administrator", "entity", "enrol-code", entity_id, "--json").stdout)
    assert proposed["status"] == "proposed" and proposed["kind"] == "entity.code", proposed
    approved = json.loads(as_person(ca, "authority", "change", "approve", str(proposed["change"])).stdout)
    assert approved["status"] == "approved" and approved["code_part"] != proposed["code_part"]
    return f"{proposed['code_part']}.{approved['code_part']}"


def trail(ca: CaHome, where: str) -> list[tuple]:
    with ca.db() as db:
        return db.execute(
            f"SELECT seq, entity_id, role, action, target, outcome, detail FROM audit_events WHERE {where} ORDER BY seq"
        ).fetchall()


def acl(ca: CaHome) -> set[tuple[str, str, str]]:
    with ca.db() as db:
        return set(db.execute("SELECT role, operation, resource FROM role_permissions").fetchall())


def est_identity(
    ca: CaHome, entity_id: str, code: str | None, csr_der: bytes, tmp: Path
) -> tuple[bytes, int]:
    """POST the CSR to /identity/simpleenroll with HTTP Basic ID:CODE and no client certificate."""
    req = tmp / f"req-{time.monotonic_ns()}.b64"
    req.write_bytes(base64.encodebytes(csr_der))
    cmd = ["curl", "-sS", "--cacert", str(ca.ca_cert), "-H", "Content-Type: application/pkcs10"]
    if code is not None:
        cmd += ["-u", f"{entity_id}:{code}"]
    cmd += ["--data-binary", f"@{req}", "-w", "\n%{http_code}", f"{ca.est_url}/identity/simpleenroll"]
    return split_status(subprocess.run(cmd, capture_output=True, timeout=60, check=True).stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(
        tmp_path_factory.mktemp("people") / "home", "--person", "olga:operator", "--person", "zed:auditor"
    )


@pytest.fixture(scope="module")
def served(home: CaHome):  # type: ignore[no-untyped-def]
    d = Daemon(home)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


def test_without_demo_no_private_key_of_any_person_is_written(tmp_path: Path) -> None:
    ca = init_home(
        tmp_path / "home", "--person", "ann:administrator", "--person", "ben:authority", demo=False
    )
    with_keys = {p for p in ca.home.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()}
    assert with_keys == {ca.home / "tls" / "server.key"}  # the daemon's own TLS key, nobody's identity
    assert ca.summary["credentials"] == {} and not list((ca.home / "credentials").iterdir())
    codes = ca.summary["enrolment_codes"]
    assert set(codes) == {"ann", "ben"} and all(len(c["code"]) >= 22 and c["expires"] for c in codes.values())
    for code in (c["code"].encode() for c in codes.values()):  # only hashes are stored, nowhere a code
        assert not [p for p in ca.home.rglob("*") if p.is_file() and code in p.read_bytes()]
    with ca.db() as db:
        rows = db.execute(
            "SELECT entity_id, role, status, cert_serial FROM entities ORDER BY entity_id"
        ).fetchall()
    assert rows == [("ann", "administrator", "pending", None), ("ben", "authority", "pending", None)]


def test_an_acl_change_has_no_effect_until_a_second_person_approves(home: CaHome) -> None:
    entry = ("operator", "audit.read", "*")
    change = propose(home, "acl", "grant", "operator", "audit.read")
    assert entry not in acl(home)
    refused = as_person(home, "operator", "audit", "verify", check=False)
    assert refused.returncode == 1 and "may not perform audit.read" in refused.stderr
    done = json.loads(as_person(home, "authority", "change", "approve", str(change)).stdout)
    assert done["status"] == "approved" and entry in acl(home)
    assert as_person(home, "operator", "audit", "verify").returncode == 0
    record = trail(home, "action='acl.grant' AND outcome='success'")[-1]
    assert record[1] == "demo-authority"
    detail = json.loads(record[6])
    assert (detail["proposer"], detail["proposer_method"]) == ("demo-administrator", "password")
    assert (detail["approver"], detail["approver_method"]) == ("demo-authority", "password")
    # and back, the same way
    as_person(
        home, "authority", "change", "approve", str(propose(home, "acl", "revoke", "operator", "audit.read"))
    )
    assert entry not in acl(home)


def test_self_grant_is_refused_even_with_approval(home: CaHome) -> None:
    before = acl(home)
    proc = as_person(
        home,
        "administrator",
        "acl",
        "grant",
        "administrator",
        "certificate.issue",
        "--resource",
        "profile:device",
        check=False,
    )
    assert proc.returncode == 1 and "no self-grant" in proc.stderr
    refusal = trail(home, "action='acl.grant' AND outcome='denied'")[-1]
    assert refusal[1] == "demo-administrator" and json.loads(refusal[6])["code"] == "self_grant"
    proc = as_person(home, "administrator", "entity", "add", "adm-2", "--role", "administrator", check=False)
    assert proc.returncode == 1 and "no self-grant" in proc.stderr
    # Proposed by someone who does not hold the role, refused to an approver who does.
    change = propose(home, "acl", "grant", "authority", "crl.publish")
    proc = as_person(home, "authority", "change", "approve", str(change), check=False)
    assert proc.returncode == 1 and "no self-grant" in proc.stderr
    refusal = trail(home, f"action='change.approve' AND target='change:{change}'")[-1]
    assert refusal[1] == "demo-authority" and refusal[5] == "denied" and "self_grant" in refusal[6]
    assert acl(home) == before
    as_person(home, "authority", "change", "reject", str(change), "--reason", "self-grant")
    listed = json.loads(as_person(home, "authority", "change", "list").stdout)
    assert next(c for c in listed if c["change"] == change)["status"] == "rejected"


def test_approving_your_own_proposal_is_refused(home: CaHome) -> None:
    before = acl(home)
    change = propose(home, "acl", "grant", "operator", "audit.export")
    proc = as_person(home, "administrator", "change", "approve", str(change), check=False)
    assert proc.returncode == 1 and "may not approve it too" in proc.stderr
    refusal = trail(home, f"action='change.approve' AND target='change:{change}'")[-1]
    assert refusal[1] == "demo-administrator" and "self_approval" in refusal[6]
    proc = as_person(home, "operator", "change", "approve", str(change), check=False)
    assert proc.returncode == 1 and "may not perform change.approve" in proc.stderr
    assert acl(home) == before
    as_person(home, "administrator", "change", "reject", str(change))  # the proposer withdraws it


def test_est_enrolment_with_a_one_time_code(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    code = home.summary["enrolment_codes"]["olga"]["code"]
    csr, _key = make_csr("olga")
    refused, status = est_identity(home, "olga", code[:-2] + "xx", csr, tmp_path)
    assert status == 401 and refused.startswith(b"enrolment_refused:")
    body, status = est_identity(home, "olga", code, csr, tmp_path)
    assert status == 200, body
    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "olga"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(home.ca_cert.read_bytes()))
    with home.db() as db:
        assert db.execute("SELECT status, cert_serial FROM entities WHERE entity_id='olga'").fetchone() == (
            "active",
            format(cert.serial_number, "x"),
        )
    body, status = est_identity(home, "olga", code, make_csr("olga")[0], tmp_path)  # once only
    assert status == 401 and body == refused  # the client is not told why: wrong and used look alike
    reasons = [
        json.loads(r[6])["reason"]
        for r in trail(home, "action='entity.enrol' AND target='olga' AND outcome='denied'")
    ]
    assert "wrong code" in reasons and "code already used" in reasons
    body, status = est_identity(home, "olga", None, csr, tmp_path)
    assert status == 401
    assert trail(home, "action='entity.enrol' AND entity_id='unauthenticated' AND outcome='denied'")


def test_an_expired_code_is_refused(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    code = two_person_code(home, "zed")
    assert not [r for r in trail(home, "action='entity.enrol-code' AND target='zed'") if code in r[6]]
    with sqlite3.connect(home.home / "db" / "ckms.sqlite3") as db:
        db.execute("UPDATE enrolment_codes SET expires_at='2020-01-01 00:00:00' WHERE entity_id='zed'")
    body, status = est_identity(home, "zed", code, make_csr("zed")[0], tmp_path)
    assert status == 401
    assert (
        json.loads(trail(home, "action='entity.enrol' AND target='zed'")[-1][6])["reason"] == "code expired"
    )


def test_five_wrong_codes_lock_it(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    code = two_person_code(home, "zed")
    csr = make_csr("zed")[0]
    for i in range(5):
        assert est_identity(home, "zed", f"wrong-{i}", csr, tmp_path)[1] == 401
    assert est_identity(home, "zed", code, csr, tmp_path)[1] == 401
    reason = json.loads(trail(home, "action='entity.enrol' AND target='zed'")[-1][6])["reason"]
    assert reason == "code locked after 5 wrong attempts"
    with home.db() as db:
        assert db.execute("SELECT status FROM entities WHERE entity_id='zed'").fetchone() == ("pending",)


def test_a_fresh_enrolment_code_takes_two_people(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    """No administrator alone (nor the authority alone) holds a whole re-issued code: a half is refused,
    the proposer cannot approve their own code, and only both halves enrol."""
    change = propose(home, "entity", "add", "quinn", "--role", "operator")
    as_person(home, "authority", "change", "approve", str(change))
    first = json.loads(as_person(home, "administrator", "entity", "enrol-code", "quinn", "--json").stdout)
    assert first["status"] == "proposed" and first["kind"] == "entity.code"
    proc = as_person(home, "administrator", "change", "approve", str(first["change"]), check=False)
    assert proc.returncode == 1 and "may not approve it too" in proc.stderr
    csr = make_csr("quinn")[0]
    assert est_identity(home, "quinn", first["code_part"], csr, tmp_path)[1] == 401  # no code stored yet
    second = json.loads(as_person(home, "authority", "change", "approve", str(first["change"])).stdout)
    assert second["code_part"] not in json.dumps([r[6] for r in trail(home, "target='quinn'")])
    for half in (first["code_part"], second["code_part"]):
        assert est_identity(home, "quinn", half, csr, tmp_path)[1] == 401
    body, status = est_identity(home, "quinn", f"{first['code_part']}.{second['code_part']}", csr, tmp_path)
    assert status == 200, body
    with home.db() as db:
        assert db.execute("SELECT status FROM entities WHERE entity_id='quinn'").fetchone() == ("active",)


def test_two_person_changes_and_enrolment_on_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("ckms_people")
    out = ckms(
        "ca",
        "init",
        "--home",
        str(tmp_path / "pg"),
        "--json",
        "--database-url",
        url,
        "--demo",
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
    )
    ca = CaHome(tmp_path / "pg", json.loads(out.stdout))
    change = propose(ca, "entity", "add", "pat", "--role", "operator")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM entities WHERE entity_id='pat'")).scalar() == 0
        proc = as_person(ca, "administrator", "change", "approve", str(change), check=False)
        assert proc.returncode == 1 and "may not approve it too" in proc.stderr
        as_person(ca, "authority", "change", "approve", str(change))
        code = two_person_code(ca, "pat")
        (tmp_path / "code").write_text(code)
        (tmp_path / "code").chmod(0o600)
        (tmp_path / "pat.csr").write_bytes(make_csr("pat")[0])
        enrol = (
            "entity",
            "enrol",
            "pat",
            "--home",
            str(ca.home),
            "--csr",
            str(tmp_path / "pat.csr"),
            "--json",
        )
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-code")
        wrong.chmod(0o600)
        assert ckms(*enrol, "--code-file", str(wrong), check=False).returncode == 1
        done = json.loads(ckms(*enrol, "--code-file", str(tmp_path / "code")).stdout)
        assert done["entity"] == "pat" and not done["password_set"]
        with engine.connect() as conn:
            row = conn.execute(text("SELECT status, cert_sha256 FROM entities WHERE entity_id='pat'")).one()
            assert tuple(row) == ("active", done["cert_sha256"])
            applied = conn.execute(
                text(
                    "SELECT entity_id, detail FROM audit_events WHERE action='entity.create' AND target='pat'"
                )
            ).one()
            assert (
                applied[0] == "demo-authority" and json.loads(applied[1])["proposer"] == "demo-administrator"
            )
            attempts = conn.execute(
                text("SELECT attempts, used_at FROM enrolment_codes WHERE entity_id='pat'")
            ).one()
            assert attempts[0] == 1 and attempts[1] is not None
        assert as_person(ca, "auditor", "audit", "verify").returncode == 0
    finally:
        engine.dispose()
