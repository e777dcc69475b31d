"""Every PKCS#11 session on the CA token is attributable (F.08, A.31).

The daemon's own sessions go on the audit trail (``hsm.session.open``/``close`` with the OS user,
pid, token, slot and purpose); interactive tools go through the audit role's pkcs11-spy shim, run
here for real against a scratch SoftHSM token with the journal-less fallback sink, and its
collector is fed journal entries in ``journalctl -o json`` form.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from ckms_app.config import load_config

from .conftest import CaHome, Daemon, init_home

ROLE_FILES = Path(__file__).resolve().parents[2] / "roles" / "audit" / "files"
SPY = Path("/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so")
SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "493817"  # the scratch token's throwaway user PIN
SO_PIN = "72615349"


def details(ca: CaHome, action: str) -> list[dict]:
    return [json.loads(row[5]) for row in ca.audit(action)]


def test_daemon_sessions_are_on_the_trail_with_the_os_user(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "home")
    before = len(ca.audit("hsm.session.open"))
    d = Daemon(ca)
    d.start()
    assert d.stop() == 0
    opened = details(ca, "hsm.session.open")[before:]
    closed = details(ca, "hsm.session.close")[before:]
    me = pwd.getpwuid(os.getuid()).pw_name
    assert opened, "the daemon opened the token without an hsm.session.open record"
    assert sorted(o["pid"] for o in opened) == sorted(c["pid"] for c in closed), "a session was not closed"
    for rec in opened + closed:
        assert rec["os_user"] == me and rec["uid"] == os.getuid()
        assert rec["token_label"] and isinstance(rec["slot"], int)
        assert rec["purpose"] == "serve"
    rows = ca.audit("hsm.session.open")[before:]
    assert all(r[0] == "ckms" and r[3] == f"token:{opened[0]['token_label']}" for r in rows)


def test_a_refused_daemon_login_is_on_the_trail(tmp_path: Path) -> None:
    ca = init_home(tmp_path / "home")
    pin_file = load_config(ca.home).token.pin_file
    real = pin_file.read_text()
    pin_file.write_text("0" * 16 + "\n")  # a wrong PIN: the daemon must refuse to start, and say who tried
    d = Daemon(ca)
    with pytest.raises(AssertionError, match="exited before ready"):
        d.start()
    pin_file.write_text(real)
    failed = [r for r in ca.audit("hsm.session.open") if r[4] == "error"]
    assert failed, "a refused login to the token left no record"
    detail = json.loads(failed[-1][5])
    assert detail["os_user"] == pwd.getpwuid(os.getuid()).pw_name and detail["code"] == "hsm_unavailable"
    assert "0000000000000000" not in failed[-1][5]


@pytest.fixture
def shim(tmp_path: Path) -> dict[str, Path]:
    """The shim installed as pkcs11-tool in a private bin directory, a scratch token, a fallback log."""
    if not SPY.exists() or not SOFTHSM.exists() or shutil.which("pkcs11-tool") is None:
        pytest.skip("OpenSC's pkcs11-spy, pkcs11-tool and SoftHSM2 are needed")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    softhsm_conf = tmp_path / "softhsm2.conf"
    softhsm_conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm_conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "scratch", "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
        env=env,
    )
    conf = tmp_path / "shim.conf"
    log = tmp_path / "events.log"
    conf.write_text(
        f"SHIM_SPY={SPY}\nSHIM_MODULE={SOFTHSM}\nSHIM_SOFTHSM2_CONF={softhsm_conf}\n"
        f"SHIM_TRACE={ROLE_FILES / 'ckms-hsm-trace'}\nSHIM_FALLBACK_LOG={log}\n"
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = (ROLE_FILES / "ckms-hsm-shim").read_text()
    assert "\nCONF=/etc/ckms-hsm-shim.conf\n" in script
    (bindir / "ckms-hsm-shim").write_text(
        script.replace("\nCONF=/etc/ckms-hsm-shim.conf\n", f"\nCONF={conf}\n")
    )
    (bindir / "ckms-hsm-shim").chmod(0o755)
    (bindir / "pkcs11-tool").symlink_to("ckms-hsm-shim")
    return {"bin": bindir, "log": log, "softhsm_conf": softhsm_conf}


def run_tool(shim: dict[str, Path], *args: str, env: dict[str, str] | None = None) -> str:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "PKCS11SPY", "PKCS11SPY_OUTPUT")
    }
    proc = subprocess.run(
        [str(shim["bin"] / "pkcs11-tool"), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_shim_records_each_call_of_a_tool_run_without_the_pin(shim: dict[str, Path]) -> None:
    out = run_tool(
        shim, "--token-label", "scratch", "--login", "--pin", "env:P", "--list-objects", env={"P": PIN}
    )
    assert "C_Login" not in out, "the spy's trace must go to the log, not to the tool's output"
    run_tool(shim, "--token-label", "scratch", "--login", "--pin", PIN, "--list-objects")
    run_tool(shim, "--token-label", "scratch", "--login", f"-p{PIN}", "--list-objects")
    lines = shim["log"].read_text().splitlines()
    starts = [ln for ln in lines if " start session=" in ln]
    assert len(starts) == 3 and all(f"uid={os.getuid()} " in ln for ln in starts)
    assert f"softhsm2_conf={shim['softhsm_conf']}" in starts[0], (
        "the CA token's configuration was not applied"
    )
    assert f"module={SOFTHSM}" in starts[0]
    assert any("C_Login" in ln and "userType=CKU_USER" in ln and "redacted" in ln for ln in lines)
    assert any("C_FindObjects " in ln or "C_FindObjects #" in ln for ln in lines)
    assert sum(" end session=" in ln and "rc=0" in ln for ln in lines) == 3
    text = shim["log"].read_text()
    pin_hex = " ".join(f"{b:02X}" for b in PIN.encode())
    assert PIN not in text and pin_hex not in text, "a PIN reached the HSM event log"


def test_shim_spies_on_the_module_the_person_names(shim: dict[str, Path]) -> None:
    run_tool(shim, "--module", str(SOFTHSM), "--list-slots")
    start = next(ln for ln in shim["log"].read_text().splitlines() if " start session=" in ln)
    assert f"module={SOFTHSM}" in start and "--module" not in start.split("args=")[1]
    assert any("C_GetSlotList" in ln for ln in shim["log"].read_text().splitlines())


def test_collector_keeps_trusted_fields_once_across_runs(tmp_path: Path) -> None:
    """The collector, fed by a journalctl stand-in that honours --after-cursor like the real one."""
    entries = [
        {
            "__CURSOR": f"c{i}",
            "__REALTIME_TIMESTAMP": str(1_700_000_000_000_000 + i),
            "_UID": str(os.getuid()),
            "_PID": str(1000 + i),
            "_COMM": "systemd-cat",
            "MESSAGE": f"call session=s C_Login #{i} userType=CKU_USER uid=0 -> CKR_OK",
        }
        for i in range(3)
    ]
    journal = tmp_path / "journal.jsonl"
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries[:2]))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "journalctl"
    fake.write_text(
        "#!/usr/bin/python3\nimport json, sys\n"
        "after = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--after-cursor=')), None)\n"
        f"lines = open({str(journal)!r}).read().splitlines()\n"
        "seen = after is None\n"
        "for ln in lines:\n"
        "    if seen: print(ln)\n"
        "    elif json.loads(ln)['__CURSOR'] == after: seen = True\n"
    )
    fake.chmod(0o755)
    log, cursor = tmp_path / "hsm.jsonl", tmp_path / "hsm.cursor"
    cmd = [str(ROLE_FILES / "ckms-hsm-collect"), "--log", str(log), "--cursor-file", str(cursor)]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    subprocess.run(cmd, check=True, env=env, capture_output=True)  # nothing new: nothing repeated
    with journal.open("a") as f:
        f.write(json.dumps(entries[2]) + "\n")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["cursor"] for r in records] == ["c0", "c1", "c2"]
    me = pwd.getpwuid(os.getuid()).pw_name
    # The journal's uid, not the "uid=0" the message claims, names who ran the tool.
    assert all(r["uid"] == os.getuid() and r["user"] == me and r["comm"] == "systemd-cat" for r in records)
    assert cursor.read_text().strip() == "c2"
    assert log.stat().st_mode & 0o777 == 0o640
