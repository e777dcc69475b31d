"""Entities, roles, separation of duties, individual authentication and the tamper-evident trail.

A.06, A.27–A.31, E.03–E.05, F.12–F.15, through the real CLI and a real two-worker daemon on a
CA home made by ``ckms ca init``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ckms_app.cli.client import CkmsClient, Credentials
from ckms_app.config import load_config
from ckms_app.errors import ClientError

from .conftest import CaHome, Daemon, ckms, curl_enroll, init_home, make_csr, split_status


def admin(ca: CaHome, *args: str, role: str = "administrator", check: bool = True):  # type: ignore[no-untyped-def]
    return ckms(
        *args,
        "--home",
        str(ca.home),
        "--password-file",
        str(ca.home / "credentials" / f"{role}.password"),
        "--cert",
        str(ca.cred(role)[0]),
        check=check,
    )


def approve(ca: CaHome, proposed: subprocess.CompletedProcess[str]) -> dict:
    """The second person (demo-authority) approves what demo-administrator proposed."""
    change = json.loads(proposed.stdout)
    assert change["status"] == "proposed", change
    return json.loads(admin(ca, "change", "approve", str(change["change"]), role="authority").stdout)


def person(ca: CaHome, entity_id: str, role: str, tmp: Path) -> dict:
    """A person the whole way: proposed, approved, given a code, enrolled with a key made outside the
    CA home. Returns the enrolment answer with the key's and certificate's paths."""
    approve(ca, admin(ca, "entity", "add", entity_id, "--role", role))
    first = json.loads(admin(ca, "entity", "enrol-code", entity_id, "--json").stdout)
    second = json.loads(admin(ca, "change", "approve", str(first["change"]), role="authority").stdout)
    code = f"{first['code_part']}.{second['code_part']}"
    csr_der, key = make_csr(entity_id)
    (tmp / f"{entity_id}.csr").write_bytes(csr_der)
    (tmp / f"{entity_id}.code").write_text(code)
    (tmp / f"{entity_id}.code").chmod(0o600)
    key_path = tmp / f"{entity_id}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path = tmp / f"{entity_id}.pem"
    out = ckms(
        "entity",
        "enrol",
        entity_id,
        "--home",
        str(ca.home),
        "--csr",
        str(tmp / f"{entity_id}.csr"),
        "--code-file",
        str(tmp / f"{entity_id}.code"),
        "--out",
        str(cert_path),
        "--json",
    )
    serial = format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")
    return {**json.loads(out.stdout), "cert": str(cert_path), "key": str(key_path), "cert_serial": serial}


def as_operator(ca: CaHome, *args: str):  # type: ignore[no-untyped-def]
    return admin(ca, *args, role="operator", check=False)


def trail(ca: CaHome, where: str = "1=1") -> list[tuple]:
    with ca.db() as db:
        return db.execute(
            f"SELECT seq, entity_id, role, action, target, outcome, detail FROM audit_events "
            f"WHERE {where} ORDER BY seq"
        ).fetchall()


def edit_config(ca: CaHome, **tables: dict) -> None:
    path = ca.home / "ckms.toml"
    raw = tomllib.loads(path.read_text())
    for name, values in tables.items():
        raw.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(raw))
    # The start-up integrity self-test covers ckms.toml: record the changed file as the new baseline.
    ckms("selftest", "--record", "--home", str(ca.home), check=False)
    ckms("ca", "recover", "--home", str(ca.home), check=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    ca = init_home(tmp_path_factory.mktemp("roles") / "home")
    log = tmp_path_factory.mktemp("alerts") / "alerts.jsonl"
    edit_config(
        ca,
        server={"workers": 2},
        audit={"seal_interval_seconds": 1, "seal_every_records": 50},
        alerts={
            "command": [sys.executable, "-c", f"import sys; open({str(log)!r}, 'a').write(sys.stdin.read())"]
        },
    )
    ca.alert_log = log  # type: ignore[attr-defined]
    return ca


@pytest.fixture(scope="module")
def served(home: CaHome):  # type: ignore[no-untyped-def]
    ckms("selftest", "--record", "--home", str(home.home), check=False)  # the baseline of what runs now
    d = Daemon(home)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


def test_operator_cannot_administer_and_the_denial_names_them(home: CaHome) -> None:
    for args in (
        ("entity", "add", "x-1", "--role", "operator"),
        ("entity", "grant", "demo-auditor", "operator"),
        ("entity", "list"),
        ("acl", "grant", "operator", "audit.read"),
        ("audit", "export", "--out", "/tmp/x"),
    ):
        proc = as_operator(home, *args)
        assert proc.returncode == 1 and "demo-operator (role operator) may not perform" in proc.stderr, (
            proc.stderr
        )
    denials = trail(home, "entity_id='demo-operator' AND outcome='denied'")
    assert {d[3] for d in denials} >= {"entity.manage", "acl.manage", "audit.export"}


def test_wrong_password_is_refused_and_audited(home: CaHome, tmp_path: Path) -> None:
    bad = tmp_path / "pw"
    bad.write_text("not the password at all\n")
    bad.chmod(0o600)
    proc = ckms(
        "entity",
        "list",
        "--home",
        str(home.home),
        "--as",
        "demo-administrator",
        "--password-file",
        str(bad),
        check=False,
    )
    assert proc.returncode == 1 and "wrong password" in proc.stderr
    assert "not the password" not in proc.stderr + proc.stdout
    assert trail(home, "action='auth.deny' AND entity_id='demo-administrator'")


def test_token_pin_cannot_act_as_anyone(home: CaHome, tmp_path: Path) -> None:
    """The token PIN is no person's credential: no command accepts it except setting the first password
    of an entity that has none; a person who has a password is refused, and that is audited."""
    pin = str(home.home / "secrets" / "token-pin")
    proc = ckms("entity", "list", "--home", str(home.home), "--token-pin-file", pin, check=False)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
    new = tmp_path / "new.pw"
    new.write_text("a password chosen by someone else\n")
    new.chmod(0o600)
    proc = ckms(
        "entity",
        "passwd",
        "demo-administrator",
        "--home",
        str(home.home),
        "--token-pin-file",
        pin,
        "--new-password-file",
        str(new),
        check=False,
    )
    assert proc.returncode == 1 and "has a password" in proc.stderr
    assert (
        "token PIN cannot replace"
        in trail(home, "action='auth.deny' AND entity_id='demo-administrator'")[-1][6]
    )
    assert admin(home, "entity", "list").returncode == 0  # its own password still works


def test_token_pin_sets_the_first_password_only(home: CaHome, tmp_path: Path) -> None:
    person(home, "pina", "operator", tmp_path)  # enrolled without a password
    pin = str(home.home / "secrets" / "token-pin")
    new = tmp_path / "new.pw"
    new.write_text("pina's own first passphrase\n")
    new.chmod(0o600)
    passwd = ("entity", "passwd", "pina", "--home", str(home.home), "--new-password-file", str(new))
    bad = tmp_path / "pin"
    bad.write_text("not-the-pin\n")
    bad.chmod(0o600)
    proc = ckms(*passwd, "--token-pin-file", str(bad), check=False)
    assert proc.returncode == 1 and "wrong token PIN" in proc.stderr
    ckms(*passwd, "--token-pin-file", pin)
    done = trail(home, "action='entity.password' AND target='pina' AND outcome='success'")
    assert done and done[-1][1] == "pina" and json.loads(done[-1][6])["method"] == "token-pin"
    proc = ckms(*passwd, "--token-pin-file", pin, check=False)  # once only
    assert proc.returncode == 1 and "has a password" in proc.stderr
    listed = ckms(
        "entity", "list", "--home", str(home.home), "--as", "pina", "--password-file", str(new), check=False
    )
    assert listed.returncode == 1 and "pina (role operator) may not perform entity.manage" in listed.stderr


def test_password_change_is_self_service_but_others_need_an_administrator(
    home: CaHome, tmp_path: Path
) -> None:
    new = tmp_path / "new.pw"
    new.write_text("a brand new long passphrase\n")
    new.chmod(0o600)
    proc = admin(
        home,
        "entity",
        "passwd",
        "demo-operator",
        "--new-password-file",
        str(new),
        role="auditor",
        check=False,
    )
    assert proc.returncode == 1 and "only an administrator" in proc.stderr
    old_pw = home.home / "credentials" / "auditor.password"
    admin(home, "entity", "passwd", "demo-auditor", "--new-password-file", str(new), role="auditor")
    new.replace(old_pw)  # keep the home's password file right for the other tests
    assert admin(home, "audit", "verify", role="auditor").returncode == 0
    assert [r[1] for r in trail(home, "action='entity.password' AND outcome='success'")][-1] == "demo-auditor"


def test_conflicting_roles_are_refused_and_audited(home: CaHome) -> None:
    approve(home, admin(home, "entity", "add", "carol", "--role", "operator"))
    for args, target in (
        (("entity", "grant", "carol", "auditor"), "carol:auditor"),
        (("entity", "grant", "carol", "administrator"), "carol:administrator"),
        (("entity", "add", "dave", "--role", "administrator", "--role", "auditor"), "dave"),
    ):
        proc = admin(home, *args, check=False)
        assert proc.returncode == 1 and "separation of duties" in proc.stderr, proc.stderr
        refusal = trail(home, f"target='{target}' AND outcome='denied'")
        assert refusal and refusal[-1][1] == "demo-administrator" and "separation_of_duties" in refusal[-1][6]
    listed = json.loads(admin(home, "entity", "list").stdout)
    assert {e["entity_id"]: e["roles"] for e in listed}["carol"] == ["operator"]
    assert "dave" not in {e["entity_id"] for e in listed}


def test_auditor_cannot_issue_and_the_denial_names_them(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    body, status = split_status(
        curl_enroll(home, make_csr("device-by-auditor")[0], tmp_path, role="auditor").stdout
    )
    assert status == 403 and b"may not perform certificate.issue" in body
    denial = trail(home, "action='certificate.issue' AND outcome='denied'")[-1]
    assert denial[1:3] == ("demo-auditor", "auditor")


def test_an_enrolled_person_holds_the_only_copy_of_their_key(
    home: CaHome, served: Daemon, tmp_path: Path
) -> None:
    before = private_key_files(home.home)
    out = person(home, "erin", "operator", tmp_path)
    assert private_key_files(home.home) == before  # the key never touched the CA home
    with CkmsClient(load_config(home.home), Credentials(Path(out["cert"]), Path(out["key"]))) as client:
        issued = client.enroll(make_csr("device-by-erin")[0])
    assert trail(home, f"action='certificate.issue' AND target='{issued.serial_number:x}'")[0][1] == "erin"


def private_key_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()}


def test_revoked_operator_is_refused_immediately_by_every_worker(
    home: CaHome, served: Daemon, tmp_path: Path
) -> None:
    out = person(home, "frank", "operator", tmp_path)
    creds = Credentials(Path(out["cert"]), Path(out["key"]))
    config = load_config(home.home)
    # Several keep-alive connections, so both workers hold frank's principal in their caches.
    clients = [CkmsClient(config, creds) for _ in range(6)]
    try:
        for i, c in enumerate(clients):
            c.enroll(make_csr(f"device-frank-{i}")[0])
        proposed = admin(home, "entity", "revoke", "frank")
        for i, c in enumerate(clients):  # a proposal changes nothing
            c.enroll(make_csr(f"device-frank-proposed-{i}")[0])
        approve(home, proposed)  # no sleep after this
        for i, c in enumerate(clients):
            with pytest.raises(ClientError, match="HTTP 403"):
                c.enroll(make_csr(f"device-frank-after-{i}")[0])
    finally:
        for c in clients:
            c.close()
    refusals = trail(home, "action='auth.deny' AND entity_id='frank'")
    assert len(refusals) >= 6 and all("revoked" in r[6] or "disabled" in r[6] for r in refusals)
    with home.db() as db:
        assert (
            db.execute("SELECT status FROM certificates WHERE serial=?", (out["cert_serial"],)).fetchone()[0]
            == "revoked"
        )


def test_which_kinds_a_role_may_revoke_comes_from_the_acl(
    home: CaHome, served: Daemon, tmp_path: Path
) -> None:
    """Operators revoke device certificates, not people's credentials; an administrator revokes a
    credential over the same API. Decided by the ACL rows per certificate kind, audited either way."""
    out = person(home, "kate", "auditor", tmp_path)
    serial = out["cert_serial"]
    config = load_config(home.home)
    with CkmsClient(config, Credentials(*home.cred("operator"))) as operator:
        with pytest.raises(
            ClientError, match=r"may not perform certificate.revoke on kind 'identity' \(HTTP 403"
        ):
            operator.revoke(serial, "keyCompromise")
    refused = trail(home, f"action='certificate.revoke' AND target='{serial}' AND outcome='denied'")
    assert refused and refused[-1][1] == "demo-operator"
    with CkmsClient(config, Credentials(*home.cred("administrator"))) as administrator:
        administrator.revoke(serial, "keyCompromise")
    done = trail(home, f"action='certificate.revoke' AND target='{serial}' AND outcome='success'")
    assert done and done[-1][1] == "demo-administrator"


def test_role_withdrawal_is_effective_at_once(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    out = person(home, "gina", "operator", tmp_path)
    with CkmsClient(load_config(home.home), Credentials(Path(out["cert"]), Path(out["key"]))) as client:
        client.enroll(make_csr("device-gina-1")[0])
        approve(home, admin(home, "entity", "revoke-role", "gina", "operator"))
        with pytest.raises(ClientError, match="HTTP 403"):
            client.enroll(make_csr("device-gina-2")[0])


def test_entity_changes_raise_alerts(home: CaHome) -> None:
    before = home.alert_log.read_text().count("\n") if home.alert_log.exists() else 0  # type: ignore[attr-defined]
    proposed = admin(home, "entity", "add", "henry", "--role", "auditor")
    events = [json.loads(line)["ckms_alert"] for line in home.alert_log.read_text().splitlines()]  # type: ignore[attr-defined]
    assert len(events) > before
    assert events[-1]["action"] == "change.propose" and events[-1]["entity_id"] == "demo-administrator"
    approve(home, proposed)
    events = [json.loads(line)["ckms_alert"] for line in home.alert_log.read_text().splitlines()]  # type: ignore[attr-defined]
    assert events[-1]["action"] == "entity.create" and events[-1]["target"] == "henry"
    assert events[-1]["entity_id"] == "demo-authority"
    for role in ("administrator", "authority"):  # no secret in an alert
        secret = (home.home / "credentials" / f"{role}.password").read_text().strip()
        assert secret not in home.alert_log.read_text()  # type: ignore[attr-defined]
    detail = json.loads(events[-1]["detail"])
    assert (detail["proposer"], detail["approver"]) == ("demo-administrator", "demo-authority")
    # Refusals alert too (someone tried to break separation of duties).
    admin(home, "entity", "grant", "henry", "operator", check=False)
    last = json.loads(home.alert_log.read_text().splitlines()[-1])["ckms_alert"]  # type: ignore[attr-defined]
    assert last["action"] == "entity.grant" and last["outcome"] == "denied"
    # This machine has no /dev/log, so the syslog channel falls back to HOME/log/alerts.log.
    fallback = home.home / "log" / "alerts.log"
    if not os.path.exists("/dev/log"):
        assert '"target": "henry"' in fallback.read_text()
        assert fallback.stat().st_mode & 0o777 == 0o600


def test_alerts_reach_a_syslog_socket(home: CaHome, tmp_path: Path) -> None:
    """A real datagram syslog socket, as /dev/log is on a host: the alert arrives there."""
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    edit_config(home, alerts={"syslog_address": path})
    try:
        admin(home, "entity", "add", "ivan", "--role", "auditor")  # the proposal alerts
        messages = []
        while not any(b"ivan" in m for m in messages):
            messages.append(sock.recv(65536))
    finally:
        edit_config(home, alerts={"syslog_address": "/dev/log"})
        sock.close()
    msg = next(m for m in messages if b"ivan" in m)
    assert msg.startswith(b"<84>")  # authpriv.warning
    assert b"ckms: " in msg and b'"action": "change.propose"' in msg


def test_trail_verifies_after_concurrent_load_on_two_workers(home: CaHome, served: Daemon) -> None:
    config = load_config(home.home)
    errors: list[BaseException] = []

    def load(n: int) -> None:
        try:
            with CkmsClient(config, Credentials(*home.cred("operator"))) as client:
                for i in range(25):
                    client.enroll(make_csr(f"device-load-{n}-{i}")[0])
                with CkmsClient(config, Credentials(*home.cred("auditor"))) as auditor:
                    with pytest.raises(ClientError):
                        auditor.enroll(make_csr(f"device-denied-{n}")[0])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    served.stop()  # both workers record their stop; the sealing worker seals last
    workers = {json.loads(r[6]).get("worker") for r in trail(home, "action='daemon.start'")}
    assert workers == {0, 1}
    with home.db() as db:
        assert db.execute("SELECT count(*) FROM audit_seals").fetchone()[0] >= 2
    changes = trail(home, "action='config.change'")  # the configuration in force is on the trail
    assert changes and len(json.loads(changes[-1][6])["config_sha256"]) == 64
    proc = admin(home, "audit", "verify", "--json", role="auditor")
    report = json.loads(proc.stdout)
    assert report["ok"] and report["seals_checked"] and report["records"] >= 200, report


TAMPERING = {
    "edit": ["UPDATE audit_events SET entity_id='someone-else' WHERE seq=40"],
    "delete": ["DELETE FROM audit_events WHERE seq=40"],
    "insert": [
        "UPDATE audit_events SET seq=-seq WHERE seq>=40",
        "UPDATE audit_events SET seq=1-seq WHERE seq<0",
        "INSERT INTO audit_events (seq, at, entity_id, role, action, target, outcome, detail, chain_hash) "
        "SELECT 40, at, 'mallory', 'operator', 'certificate.issue', 'ff', 'success', '{}', chain_hash "
        "FROM audit_events WHERE seq=39",
    ],
    "reorder": [
        "UPDATE audit_events SET seq=-1 WHERE seq=40",
        "UPDATE audit_events SET seq=40 WHERE seq=41",
        "UPDATE audit_events SET seq=41 WHERE seq=-1",
    ],
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_in_the_database_is_named_by_verify(home: CaHome, kind: str, tmp_path: Path) -> None:
    db_path = home.home / "db" / "ckms.sqlite3"
    saved = sqlite3.connect(tmp_path / "saved.sqlite3")
    live = sqlite3.connect(db_path)
    live.backup(saved)
    try:
        with live:
            for statement in TAMPERING[kind]:
                live.execute(statement)
        proc = admin(home, "audit", "verify", role="auditor", check=False)
        assert proc.returncode == 2 and "BROKEN at record 40" in proc.stdout, proc.stdout + proc.stderr
    finally:
        saved.backup(live)
        live.close()
        saved.close()
    assert admin(home, "audit", "verify", role="auditor").returncode == 0


def test_a_cut_tail_is_named_by_verify(home: CaHome, tmp_path: Path) -> None:
    """Removing the newest records together with their seals and moving the chain head back leaves a
    consistent database; the seal log outside it (written by every seal) shows what was cut."""
    assert json.loads(admin(home, "audit", "seal").stdout)["sealed_up_to_seq"]
    seal_log = home.home / "log" / "audit-seals.jsonl"
    assert seal_log.exists() and seal_log.stat().st_mode & 0o777 == 0o600
    db_path = home.home / "db" / "ckms.sqlite3"
    saved = sqlite3.connect(tmp_path / "saved.sqlite3")
    live = sqlite3.connect(db_path)
    live.backup(saved)
    try:
        with live:
            keep = live.execute(
                "SELECT up_to_seq FROM audit_seals ORDER BY up_to_seq DESC LIMIT 1 OFFSET 1"
            ).fetchone()[0]
            keep_hash = live.execute("SELECT chain_hash FROM audit_events WHERE seq=?", (keep,)).fetchone()[0]
            live.execute("DELETE FROM audit_events WHERE seq>?", (keep,))
            live.execute("DELETE FROM audit_seals WHERE up_to_seq>?", (keep,))
            live.execute("UPDATE audit_chain_head SET last_seq=?, last_hash=?", (keep, keep_hash))
        proc = admin(home, "audit", "verify", role="auditor", check=False)
        assert proc.returncode == 2 and f"BROKEN at record {keep + 1}" in proc.stdout, (
            proc.stdout + proc.stderr
        )
        assert "missing tail" in proc.stdout
        # the same cut with the seal log removed as well: still refused, and said so
        proc = admin(
            home, "audit", "verify", "--seal-log", str(tmp_path / "none.jsonl"), role="auditor", check=False
        )
        assert proc.returncode == 2 and "seal log" in proc.stdout
    finally:
        saved.backup(live)
        live.close()
        saved.close()
    assert admin(home, "audit", "verify", role="auditor").returncode == 0


def test_export_for_the_auditor_verifies_and_an_edit_is_named(home: CaHome, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    admin(home, "audit", "export", "--out", str(out), role="auditor")
    assert "OK" in admin(home, "audit", "verify", "--export", str(out), role="auditor").stdout
    lines = out.read_text().splitlines()
    items = [json.loads(line) for line in lines]
    victim = next(i for i, item in enumerate(items) if item.get("seq") == 25)
    items[victim]["outcome"] = "success" if items[victim]["outcome"] != "success" else "denied"
    out.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    proc = admin(home, "audit", "verify", "--export", str(out), role="auditor", check=False)
    assert proc.returncode == 2 and "BROKEN at record 25" in proc.stdout
    # The authority may export too; the administrator may not read the trail it is audited by.
    assert (
        admin(home, "audit", "export", "--out", str(tmp_path / "a.jsonl"), role="authority").returncode == 0
    )
    proc = admin(home, "audit", "export", "--out", str(tmp_path / "b.jsonl"), check=False)
    assert proc.returncode == 1 and "may not perform audit.export" in proc.stderr
