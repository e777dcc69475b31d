"""The terminal's daily tools against a real daemon (SoftHSM, mutual TLS, SQLite): ``ckms terminal …``.

A production run of 1,000 CSRs enrols with progress output, a rerun issues nothing, a killed run resumes
without duplicates, a recall of 100 devices revokes exactly those in one audited batch (the trail
verifies), a dry run changes nothing, paging returns every certificate exactly once, and a person whose
role may not revoke is refused before the body is parsed.
"""

from __future__ import annotations

import csv
import getpass
import http.client
import io
import json
import signal
import ssl
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ckms_app.cli.client import Credentials
from ckms_app.cli.terminal_client import Endpoint, TerminalClient
from ckms_app.errors import ClientError

from .conftest import CKMS, CaHome, Daemon, ckms, init_home

BATCH = 1000


def write_csrs(directory: Path, prefix: str, count: int) -> list[str]:
    """``count`` P-256 requests with CN ``<prefix>-NNNNN`` as PEM files; a fresh key each (about 0.2 ms)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}-{i:05d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        (directory / f"{name}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        names.append(name)
    return names


def terminal(
    ca: CaHome, *args: str, check: bool = True, role: str = "operator"
) -> subprocess.CompletedProcess[str]:
    cert, key = ca.cred(role)
    return ckms(
        "terminal", *args, "--home", str(ca.home), "--cert", str(cert), "--key", str(key), check=check
    )


def rows(ca: CaHome, sql: str, *params: object) -> list[tuple]:
    with ca.db() as db:
        return db.execute(sql, params).fetchall()


def client(ca: CaHome, role: str = "operator") -> TerminalClient:
    port = int(ca.est_url.split(":")[2].split("/")[0])
    return TerminalClient(Endpoint("127.0.0.1", port, ca.ca_cert), Credentials(*ca.cred(role)))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CaHome:
    return init_home(tmp_path_factory.mktemp("terminal") / "home")


@pytest.fixture(scope="module")
def served(home: CaHome):  # type: ignore[no-untyped-def]
    d = Daemon(home)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


@pytest.fixture(scope="module")
def batch(home: CaHome, served: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The production run: 1,000 CSRs enrolled once (the first test checks how)."""
    tmp = tmp_path_factory.mktemp("batch")
    names = write_csrs(tmp / "in", "dev", BATCH)
    before = home.certificate_count()
    started = time.monotonic()
    first = terminal(home, "enrol-batch", str(tmp / "in"), "--out", str(tmp / "out"))
    return {
        "tmp": tmp,
        "names": names,
        "before": before,
        "first": first,
        "seconds": time.monotonic() - started,
    }


def test_a_batch_of_1000_enrols_with_progress_and_a_rerun_issues_nothing(home: CaHome, batch: dict) -> None:
    first, tmp = batch["first"], batch["tmp"]
    assert f"{BATCH}/{BATCH} issued {BATCH}, skipped 0, failed 0" in first.stderr  # progress, plain counts
    assert "100/1000" in first.stderr and "500/1000" in first.stderr
    assert f"issued {BATCH}, skipped 0 (done before), failed 0" in first.stdout
    assert home.certificate_count() == batch["before"] + BATCH
    manifest = [json.loads(line) for line in (tmp / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len({m["sha256"] for m in manifest}) == BATCH
    cert = x509.load_pem_x509_certificate((tmp / "out" / "dev-00042.cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=dev-00042"
    print(f"1,000 CSRs enrolled in {batch['seconds']:.1f} s")  # noqa: T201 - shown with -s

    again = terminal(home, "enrol-batch", str(tmp / "in"), "--out", str(tmp / "out"))
    assert f"issued 0, skipped {BATCH} (done before), failed 0" in again.stdout
    assert home.certificate_count() == batch["before"] + BATCH


def test_a_killed_run_resumes_without_duplicates(home: CaHome, served: Daemon, tmp_path: Path) -> None:
    write_csrs(tmp_path / "src", "kill", 400)
    archive = tmp_path / "run.tar.gz"  # the same run as an archive: read in memory, nothing extracted
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="line-3")
    before = home.certificate_count()
    out = tmp_path / "out"
    cert, key = home.cred("operator")
    cmd = [*CKMS, "terminal", "enrol-batch", str(archive), "--out", str(out), "--workers", "2"]
    cmd += ["--home", str(home.home), "--cert", str(cert), "--key", str(key)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 60:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done_before_kill = manifest.read_text().count("\n")
    assert 60 <= done_before_kill < 400, "the run was not killed midway"

    resumed = terminal(home, "enrol-batch", str(archive), "--out", str(out))
    assert "failed 0" in resumed.stdout
    assert f"skipped {done_before_kill} (done before)" in resumed.stdout
    assert home.certificate_count() == before + 400  # no request answered twice
    subjects = rows(
        home, "SELECT subject, count(*) FROM certificates WHERE subject LIKE 'CN=kill-%' GROUP BY 1"
    )
    assert len(subjects) == 400 and all(n == 1 for _, n in subjects)
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.endswith("}")]
    assert len({e["sha256"] for e in entries}) == 400
    assert (out / "line-3__kill-00399.cert.pem").exists()


def test_recall_of_100_devices_revokes_exactly_those_in_one_audited_batch(
    home: CaHome, batch: dict, tmp_path: Path
) -> None:
    recalled = batch["names"][100:200]
    listing = tmp_path / "recall.txt"
    listing.write_text("# lot 7 recall\n" + "\n".join(recalled) + "\n")
    revoked_before = rows(home, "SELECT count(*) FROM revocations")[0][0]
    seq_before = rows(home, "SELECT max(seq) FROM audit_events")[0][0]

    dry = terminal(home, "recall", str(listing), "--reason", "keyCompromise", "--dry-run")
    assert "dry run: 100 certificates would be revoked" in dry.stdout
    assert (
        rows(home, "SELECT count(*) FROM revocations")[0][0] == revoked_before
    )  # the dry run changed nothing
    assert rows(home, "SELECT count(*) FROM certificates WHERE status='revoked'")[0][0] == revoked_before

    unconfirmed = terminal(home, "recall", str(listing), "--reason", "keyCompromise", check=False)
    assert unconfirmed.returncode == 1 and "recall-100" in unconfirmed.stderr

    done = terminal(home, "recall", str(listing), "--reason", "keyCompromise", "--yes")
    assert "revoked 100 certificates (keyCompromise)" in done.stdout
    revoked = rows(
        home, "SELECT c.subject FROM certificates c WHERE c.status='revoked' AND c.subject LIKE 'CN=dev-%'"
    )
    assert sorted(s for (s,) in revoked) == sorted(f"CN={n}" for n in recalled)
    assert rows(home, "SELECT count(*) FROM revocations")[0][0] == revoked_before + 100
    others = rows(home, "SELECT count(*) FROM certificates WHERE subject LIKE 'CN=dev-%' AND status='valid'")
    assert others[0][0] == BATCH - 100

    trail = rows(home, "SELECT action, target, outcome, detail FROM audit_events WHERE seq > ?", seq_before)
    batches = [r for r in trail if r[0] == "certificate.recall"]
    assert len(batches) == 1 and batches[0][2] == "success"
    batch_id = batches[0][1]
    assert json.loads(batches[0][3])["revoked"] == 100
    per_cert = [r for r in trail if r[0] == "certificate.revoke"]
    assert len(per_cert) == 100
    assert all(json.loads(r[3]) == {"reason": "keyCompromise", "batch": batch_id} for r in per_cert)

    with client(home) as c:  # the batch is in the next CRL like any revocation
        published = c.publish_crl()
    assert published["entries"] == rows(home, "SELECT count(*) FROM revocations")[0][0]

    verify = ckms(
        "audit",
        "verify",
        "--json",
        "--home",
        str(home.home),
        "--cert",
        str(home.cred("auditor")[0]),
        "--password-file",
        str(home.home / "credentials" / "auditor.password"),
    )
    assert json.loads(verify.stdout)["ok"] is True


def test_a_recall_naming_an_unknown_device_revokes_nothing(home: CaHome, batch: dict, tmp_path: Path) -> None:
    listing = tmp_path / "recall.txt"
    listing.write_text("\n".join([*batch["names"][300:310], "dev-99999"]) + "\n")
    before = rows(home, "SELECT count(*) FROM revocations")[0][0]
    refused = terminal(home, "recall", str(listing), "--reason", "superseded", "--yes", check=False)
    assert (
        refused.returncode == 1 and "dev-99999" in refused.stderr and "nothing was revoked" in refused.stderr
    )
    assert rows(home, "SELECT count(*) FROM revocations")[0][0] == before


def test_find_revoke_by_device_id_and_export(home: CaHome, batch: dict) -> None:
    found = terminal(home, "find", "--device-id", "dev-00900", "--json")
    [item] = json.loads(found.stdout)
    assert item["device_id"] == "dev-00900" and item["status"] == "valid"
    terminal(home, "revoke", "--device-id", "dev-00900", "--reason", "cessationOfOperation", "--yes")
    [item] = json.loads(terminal(home, "find", "--device-id", "dev-00900", "--json").stdout)
    assert item["status"] == "revoked" and item["revocation_reason"] == "cessationOfOperation"
    assert terminal(home, "find", "--device-id", "dev-77777", check=False).returncode == 1

    exported = terminal(home, "export", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(exported.stdout)))
    total = rows(home, "SELECT count(*) FROM certificates")[0][0]
    assert len(table) == total and len({r["serial"] for r in table}) == total
    as_json = json.loads(terminal(home, "export", "--format", "json", "--status", "revoked").stdout)
    assert {r["status"] for r in as_json} == {"revoked"}
    assert len(as_json) == rows(home, "SELECT count(*) FROM certificates WHERE status='revoked'")[0][0]


def test_paging_returns_every_certificate_exactly_once(home: CaHome, batch: dict) -> None:
    seen: list[str] = []
    with client(home) as c:
        query = {"limit": "37"}
        while True:
            page = c.search(query)
            assert len(page["items"]) <= 37
            seen += [i["serial"] for i in page["items"]]
            if page["next_cursor"] is None:
                break
            query["cursor"] = page["next_cursor"]
        assert len(seen) == len(set(seen))
        assert set(seen) == {s for (s,) in rows(home, "SELECT serial FROM certificates")}
        with pytest.raises(ClientError, match="limit must be between 1 and 1000"):
            c.search({"limit": "100000"})
        with pytest.raises(ClientError, match="cursor"):
            c.search({"cursor": "not-ours"})
        issued = c.search({"issued_from": "2000-01-01", "expires_to": "2000-01-02"})
        assert issued["items"] == []


def test_a_role_without_revoke_is_refused_before_the_body_is_parsed(home: CaHome, served: Daemon) -> None:
    """The auditor may read but not revoke: a body that is not even JSON gets 403, never a parse error."""
    port = int(home.est_url.split(":")[2].split("/")[0])
    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    ctx.load_cert_chain(*home.cred("auditor"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request(
        "POST", "/api/v1/recalls", body=b"{not json at all", headers={"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 403 and answer["error"] == "forbidden", answer
    trail = rows(
        home,
        "SELECT entity_id, outcome, detail FROM audit_events WHERE action='certificate.recall' ORDER BY seq DESC LIMIT 1",
    )
    assert trail[0][0] == "demo-auditor" and trail[0][1] == "denied"
    assert json.loads(trail[0][2])["code"] == "forbidden"
    with client(home, "auditor") as c, pytest.raises(ClientError, match="HTTP 403"):
        c.recall("device_id", ["dev-00001"], "unspecified", dry_run=True)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_a_bar_redrawn_in_place() -> None:
    from ckms_app.cli.terminal_batch import Progress, Summary

    stream = _Tty()
    progress = Progress(stream, 4, lambda s: f"issued {s.issued}")
    summary = Summary(total=4)
    for _ in range(4):
        summary.issued += 1
        progress.update(summary)
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("] 4/4 issued 4\n")
    assert "\r[" + "#" * 15 + "." * 15 + "] 2/4" in text


def test_a_large_recall_is_planned_in_one_pass_with_the_same_answer(home: CaHome, batch: dict) -> None:
    """Above 1,000 names the plan is one streamed pass, not one query per 100 IDs: same answer."""
    names = [*batch["names"], "dev-99999"]
    with client(home) as c:
        large = c.recall("device_id", names, "superseded", dry_run=True)
        small = c.recall("device_id", names[:50], "superseded", dry_run=True)
    valid = {
        s
        for (s,) in rows(
            home, "SELECT subject FROM certificates WHERE subject LIKE 'CN=dev-%' AND status='valid'"
        )
    }
    assert {f"CN={t['name']}" for t in large["would_revoke"]} == valid
    revoked = rows(
        home, "SELECT count(*) FROM certificates WHERE subject LIKE 'CN=dev-%' AND status='revoked'"
    )
    assert len(large["already_revoked"]) == revoked[0][0]
    assert large["not_found"] == ["dev-99999"]
    assert {t["serial"] for t in small["would_revoke"]} <= {t["serial"] for t in large["would_revoke"]}
    assert len(small["would_revoke"]) + len(small["already_revoked"]) == 50


def test_on_the_terminal_the_tools_use_the_persons_own_credential(
    home: CaHome, batch: dict, tmp_path: Path
) -> None:
    """No CA home on the terminal: ca.pem, est.conf and people/<login>/{cert,key}.pem, as the role installs them."""
    me = tmp_path / "people" / getpass.getuser()
    me.mkdir(parents=True, mode=0o700)
    cert, key = home.cred("operator")
    (me / "cert.pem").write_bytes(cert.read_bytes())
    (me / "key.pem").write_bytes(key.read_bytes())
    (tmp_path / "ca.pem").write_bytes(home.ca_cert.read_bytes())
    (tmp_path / "est.conf").write_text(f"# Managed by ckms\nEST_URL={home.est_url}\n")
    env = {"CKMS_TERMINAL_DIR": str(tmp_path), "CKMS_HOME": ""}
    found = ckms("terminal", "find", "--device-id", "dev-00500", "--json", env=env)
    assert json.loads(found.stdout)[0]["device_id"] == "dev-00500"
    (me / "cert.pem").unlink()
    refused = ckms("terminal", "find", "--device-id", "dev-00500", env=env, check=False)
    assert refused.returncode == 1 and "no enrolled credential" in refused.stderr
