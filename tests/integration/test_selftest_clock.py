"""Self-tests and the error state (E.32, E.35–E.37, F.24); the clock gate (A.33–A.35).

The error-state test runs the real daemon from a *copy* of the installed package, then corrupts a
file of that copy (never the repository). The clock tests put a fake ``chronyc`` first on PATH that
reports what a state file says: synchronised, not synchronised, or 25 s off.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from ckms_app.authority.clock import parse_tracking

from .conftest import CaHome, Daemon, ckms, curl_enroll, free_port, make_csr, split_status

REPO = Path(__file__).resolve().parents[2]

SYNC = "A9FEA97B,169.254.169.123,4,1764115200.000000000,0.000012345,0.000001000,0.000010000,-1.234,0.001,0.010,0.000100000,0.000200000,64.0,Normal"
UNSYNC = "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,0.0,Not synchronised"
OFFSET = "A9FEA97B,169.254.169.123,4,1764115200.000000000,-25.000000000,0.000001000,0.000010000,-1.234,0.001,0.010,0.000100000,0.000200000,64.0,Normal"


def test_parse_tracking() -> None:
    assert parse_tracking(SYNC, 10).synchronised
    r = parse_tracking(UNSYNC, 10)
    assert not r.synchronised and "not synchronised" in r.reason
    r = parse_tracking(OFFSET, 10)
    assert not r.synchronised and "exceeds" in r.reason
    assert parse_tracking(OFFSET, 30).synchronised
    assert not parse_tracking("garbage", 10).synchronised


def fake_chronyc(dir_: Path, state: str) -> Path:
    bin_dir = dir_ / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "chronyc"
    script.write_text(f"""#!/bin/sh
case "$(cat {bin_dir}/state)" in
  sync) echo '{SYNC}' ;;
  offset) echo '{OFFSET}' ;;
  *) echo '{UNSYNC}' ;;
esac
""")
    script.chmod(0o755)
    (bin_dir / "state").write_text(state)
    return bin_dir


def set_clock(bin_dir: Path, state: str) -> None:
    (bin_dir / "state").write_text(state)
    time.sleep(1.3)  # the daemon caches a reading for 1 s


def https_json(home: CaHome, method: str, path: str, role: str | None = "administrator") -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(home.ca_cert))
    if role:
        ctx.load_cert_chain(*home.cred(role))
    base = home.est_url.split("/.well-known")[0]
    req = urllib.request.Request(
        base + path,
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_health(home: CaHome, status: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, body = https_json(home, "GET", "/health", role=None)
        if code == status or time.monotonic() > deadline:
            assert code == status, body
            return body
        time.sleep(0.2)


# --- clock gate -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clock_ca(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("clock")
    bin_dir = fake_chronyc(root, "sync")
    path = f"{bin_dir}:{os.environ['PATH']}"
    out = ckms(
        "ca",
        "init",
        "--home",
        str(root / "home"),
        "--json",
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
        "--clock-source",
        "chrony",
        "--demo",
        "--person",
        "clock-erin:operator",
        env={"PATH": path},
    )
    home = CaHome(root / "home", json.loads(out.stdout))
    assert home.summary["clock_source"] == "chrony"
    old = os.environ["PATH"]
    os.environ["PATH"] = path  # the daemon subprocess inherits it
    daemon = Daemon(home)
    try:
        daemon.start()
    finally:
        os.environ["PATH"] = old
    yield home, bin_dir
    set_clock(bin_dir, "sync")
    daemon.stop()


def test_init_refused_while_unsynchronised_leaves_no_config(tmp_path: Path) -> None:
    """The ceremony refuses to run on an unsynchronised clock before any key exists, and leaves no
    ckms.toml behind: a retry (a converge's `creates:`) must not mistake the home for an initialised CA."""
    bin_dir = fake_chronyc(tmp_path, "unsync")
    home = tmp_path / "home"
    proc = ckms(
        "ca",
        "init",
        "--home",
        str(home),
        "--json",
        "--clock-source",
        "chrony",
        "--demo",
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        check=False,
    )
    assert proc.returncode != 0 and "clock" in proc.stderr.lower(), proc.stderr
    assert not (home / "ckms.toml").exists()
    assert not list((home / "ca").glob("*"))  # no CA certificate either


def test_issuance_refused_while_clock_unsynchronised(clock_ca, tmp_path: Path) -> None:
    home, bin_dir = clock_ca
    csr, _ = make_csr("clock-ok-1")
    body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
    assert code == 200, body

    set_clock(bin_dir, "unsync")
    csr, _ = make_csr("clock-bad-1")
    res = curl_enroll(home, csr, tmp_path)
    body, code = split_status(res.stdout)
    assert code == 503
    assert b"clock_unsynchronised" in body and b"not synchronised" in body
    # Retry-After tells an EST client when to come back
    res = subprocess.run(
        [
            "curl",
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            str(home.ca_cert),
            "--cert",
            str(home.cred("operator")[0]),
            "--key",
            str(home.cred("operator")[1]),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            "@/dev/null",
            f"{home.est_url}/simpleenroll",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "retry-after" in res.stdout.lower()
    refused = [r for r in home.audit("certificate.issue") if r[4] == "error"]
    assert any(json.loads(r[5])["code"] == "clock_unsynchronised" for r in refused)
    health = wait_health(home, 503)
    assert health["checks"]["clock"].startswith("error")
    code, body = https_json(home, "POST", "/api/v1/crl/publish", role="operator")
    assert code == 503 and body["error"] == "clock_unsynchronised"

    set_clock(bin_dir, "offset")
    csr, _ = make_csr("clock-bad-2")
    body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
    assert code == 503 and b"exceeds the bound of 10 s" in body

    set_clock(bin_dir, "sync")
    csr, _ = make_csr("clock-ok-2")
    body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
    assert code == 200, body
    wait_health(home, 200)


def test_nothing_at_all_is_signed_while_the_clock_is_unsynchronised(clock_ca) -> None:
    """Every signing path goes through the one signer, so the clock gate holds for all of them: an
    identity certificate (ckms entity enrol), a renewal of the daemon's TLS certificate and a CRL. The
    refused enrolment leaves its one-time code usable."""
    home, bin_dir = clock_ca
    with home.db() as db:
        before = db.execute(
            "SELECT count(*), (SELECT max(crl_number) FROM crls) FROM certificates"
        ).fetchone()
    tls_before = (home.home / "tls" / "server.pem").read_bytes()
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    set_clock(bin_dir, "unsync")
    try:
        code_file = home.home.parent / "clock-erin.code"
        code_file.write_text(home.summary["enrolment_codes"]["clock-erin"]["code"])
        code_file.chmod(0o600)
        csr_file = home.home.parent / "clock-erin.csr"
        csr_file.write_bytes(make_csr("clock-erin")[0])
        enrol = ["entity", "enrol", "clock-erin", "--home", str(home.home), "--csr", str(csr_file)]
        add = ckms(*enrol, "--code-file", str(code_file), check=False, env=path)
        renew = ckms("ca", "renew-tls", "--home", str(home.home), check=False, env=path)
        code, body = https_json(home, "POST", "/api/v1/crl/publish", role="operator")
    finally:
        set_clock(bin_dir, "sync")
    assert add.returncode != 0 and "not synchronised" in add.stderr, add.stderr
    assert renew.returncode != 0 and "not synchronised" in renew.stderr, renew.stderr
    assert code == 503 and body["error"] == "clock_unsynchronised"
    with home.db() as db:
        after = db.execute("SELECT count(*), (SELECT max(crl_number) FROM crls) FROM certificates").fetchone()
        entity = db.execute(
            "SELECT status, cert_serial FROM entities WHERE entity_id = 'clock-erin'"
        ).fetchone()
    assert after == before and entity == ("pending", None), (
        "something was signed or stored with the clock gate closed"
    )
    assert (home.home / "tls" / "server.pem").read_bytes() == tls_before
    # With the clock back, the same renewal goes through the same signer.
    renewed = json.loads(ckms("ca", "renew-tls", "--home", str(home.home), "--json", env=path).stdout)
    cert = x509.load_pem_x509_certificate((home.home / "tls" / "server.pem").read_bytes())
    assert (
        format(cert.serial_number, "x") == renewed["serial"]
        and cert.issuer == x509.load_pem_x509_certificate(home.ca_cert.read_bytes()).subject
    )
    assert any(r[3] == renewed["serial"] for r in home.audit("certificate.issue"))
    # ... and the refused enrolment did not use up the person's code
    ckms(*enrol, "--code-file", str(code_file), env=path)


# --- self-tests and the error state ----------------------------------------------------------------
def test_selftest_cli_passes_on_a_fresh_ca(ca: CaHome) -> None:
    out = ckms("selftest", "--home", str(ca.home), "--json")
    report = json.loads(out.stdout)
    assert report["ok"] and not report["error_state"]
    names = {c["name"] for c in report["checks"]}
    assert {"kat.sha256", "kat.sha384", "kat.ecdsa_p256_verify", "hsm.pairwise", "integrity"} <= names


class CopyDaemon(Daemon):
    """The daemon run from a copy of the package (cwd = the copy), so the copy is what is installed."""

    def __init__(self, home: CaHome, code_dir: Path) -> None:
        super().__init__(home)
        self.code_dir = code_dir

    def start(self, timeout: float = 30) -> None:
        old = os.getcwd()
        os.chdir(self.code_dir)
        try:
            super().start(timeout)
        finally:
            os.chdir(old)


def ckms_copy(code_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ckms_app.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=code_dir,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ckms {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_corrupted_code_puts_daemon_in_error_state_until_recovered(tmp_path: Path) -> None:
    code_dir = tmp_path / "code"
    shutil.copytree(REPO / "ckms_app", code_dir / "ckms_app", ignore=shutil.ignore_patterns("__pycache__"))
    out = ckms_copy(
        code_dir,
        "ca",
        "init",
        "--home",
        str(tmp_path / "home"),
        "--json",
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
        "--demo",
    )
    home = CaHome(tmp_path / "home", json.loads(out.stdout))
    manifest = json.loads((home.home / "selftest-manifest.json").read_text())
    assert manifest["code_dir"] == str(code_dir / "ckms_app")
    daemon = CopyDaemon(home, code_dir)
    daemon.start()
    victim = code_dir / "ckms_app" / "x509" / "profiles.py"
    original = victim.read_bytes()
    try:
        wait_health(home, 200)
        csr, _ = make_csr("selftest-ok-1")
        assert split_status(curl_enroll(home, csr, tmp_path).stdout)[1] == 200

        # only an administrator may trigger the self-test over the API
        code, _ = https_json(home, "POST", "/api/v1/admin/selftest", role="operator")
        assert code == 403
        victim.write_bytes(original + b"\n# tampered\n")
        code, body = https_json(home, "POST", "/api/v1/admin/selftest")
        assert code == 503 and body["error_state"] and "code/x509/profiles.py modified" in body["reason"]

        health = wait_health(home, 503)
        assert "profiles.py modified" in health["checks"]["error_state"]
        time.sleep(1.0)  # every worker follows the shared state within 0.5 s
        for _ in range(4):  # whichever worker answers: no issuance, a reason, Retry-After
            csr, _ = make_csr("selftest-bad")
            body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
            assert code == 503 and b"error_state" in body and b"profiles.py modified" in body
        code, body = https_json(home, "GET", "/api/v1/certificates/01", role="operator")
        assert code == 503 and body["error"] == "error_state"
        assert [r for r in home.audit("selftest.run") if r[4] == "error"]

        # recovery is refused while the cause is still there, then succeeds once repaired
        res = ckms_copy(code_dir, "ca", "recover", "--home", str(home.home), check=False)
        assert res.returncode == 1 and "still in the error state" in res.stdout
        wait_health(home, 503)
        victim.write_bytes(original)
        ckms_copy(code_dir, "ca", "recover", "--home", str(home.home))
        wait_health(home, 200)
        time.sleep(1.0)
        for i in range(4):
            csr, _ = make_csr(f"selftest-ok-{i + 2}")
            body, code = split_status(curl_enroll(home, csr, tmp_path).stdout)
            assert code == 200, body
        assert [r for r in home.audit("daemon.recover") if r[4] == "success"]
        assert [r for r in home.audit("daemon.recover") if r[4] == "denied"]
    finally:
        victim.write_bytes(original)
        daemon.stop()

    # a daemon started on corrupted code comes up in the error state (start-up self-test)
    victim.write_bytes(original + b"\n# tampered again\n")
    (home.home / "state" / "error-state.json").unlink(missing_ok=True)
    daemon.start()
    try:
        health = wait_health(home, 503)
        assert "start-up self-test failed" in health["checks"]["error_state"]
    finally:
        daemon.stop()
        victim.write_bytes(original)


def test_selftest_record_after_upgrade(tmp_path: Path) -> None:
    code_dir = tmp_path / "code"
    shutil.copytree(REPO / "ckms_app", code_dir / "ckms_app", ignore=shutil.ignore_patterns("__pycache__"))
    out = ckms_copy(
        code_dir,
        "ca",
        "init",
        "--home",
        str(tmp_path / "home"),
        "--json",
        "--est-port",
        str(free_port()),
        "--crl-port",
        str(free_port()),
    )
    home = Path(json.loads(out.stdout)["home"])
    (code_dir / "ckms_app" / "upgrade_note.py").write_text('"""new module from an upgrade"""\n')
    res = ckms_copy(code_dir, "selftest", "--home", str(home), check=False)
    assert res.returncode == 1 and "code/upgrade_note.py not in the manifest" in res.stdout
    ckms_copy(code_dir, "selftest", "--home", str(home), "--record")
    ckms_copy(code_dir, "ca", "recover", "--home", str(home))
    # editing the manifest by hand is caught by its HSM signature
    manifest = home / "selftest-manifest.json"
    body = json.loads(manifest.read_text())
    body["files"]["code/upgrade_note.py"] = "0" * 64
    manifest.write_text(json.dumps(body))
    res = ckms_copy(code_dir, "selftest", "--home", str(home), check=False)
    assert res.returncode == 1 and "signature does not verify" in res.stdout
