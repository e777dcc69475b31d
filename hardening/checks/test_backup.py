"""Checks of the backup role (F.49, F.54, F.57, E.11): scheduled encrypted backups, a backup after every
configuration change, backups that the CA host itself cannot decrypt, and (after a restore drill) a
restored CA that is the one backed up and passed its start-up self-tests before serving."""

from __future__ import annotations

import json
import shlex

import pytest

# The restored database's row for one serial (run with the CA's own python on the host).
_CERT_ROW = """
import sys
from pathlib import Path
from sqlalchemy import select
from ckms_app.config import load_config
from ckms_app.store.engine import open_engine
from ckms_app.store.schema import certificates
engine = open_engine(load_config(Path(sys.argv[1])).database_url)
with engine.connect() as conn:
    row = conn.execute(select(certificates.c.serial, certificates.c.subject, certificates.c.status)
                       .where(certificates.c.serial == sys.argv[2])).first()
print(dict(row._mapping) if row else "no such certificate")
sys.exit(0 if row else 1)
"""

testinfra_hosts = ["ansible://ca"]

HOME = "/var/lib/ckms"
BACKUP_DIR = "/var/backups/ckms"


def newest_backup(host) -> str:
    return host.run(f"ls -1t {BACKUP_DIR}/ckms-*.cms 2>/dev/null | head -1").stdout.strip()


@pytest.mark.check("check:F.49.backup_timer_active")
def test_backup_timer_active(host, evidence):
    timer = host.service("ckms-backup.timer")
    show = host.run(
        "systemctl show ckms-backup.timer -p TimersCalendar -p NextElapseUSecRealtime "
        "-p LastTriggerUSec -p Persistent"
    ).stdout
    evidence.add("timer", show.strip())
    assert timer.is_enabled and timer.is_running
    assert "OnCalendar=" in show and "Persistent=yes" in show
    unit = host.run(
        "systemctl show ckms-backup.service -p User -p ProtectSystem -p PrivateNetwork -p ExecStart"
    ).stdout
    evidence.add("backup service", unit.strip())
    assert "User=ckms" in unit and "ProtectSystem=strict" in unit and "PrivateNetwork=yes" in unit
    backups = host.run(f"ls -l --time-style=+%FT%T {BACKUP_DIR}").stdout
    evidence.add("backup location", backups.strip())
    d = host.file(BACKUP_DIR)
    assert d.user == "ckms" and d.mode == 0o700


@pytest.mark.check("check:F.54.backup_after_config_change")
def test_backup_after_config_change(host, evidence):
    path_unit = host.service("ckms-backup.path")
    show = host.run("systemctl show ckms-backup.path -p Paths -p Unit -p ActiveState").stdout
    evidence.add("path unit", show.strip())
    assert path_unit.is_enabled and path_unit.is_running
    assert (
        f"PathChanged={HOME}/ckms.toml" in show.replace(" ", "=").replace("{=", "").replace("==", "=")
        or f"{HOME}/ckms.toml" in show
    )
    last = host.run(f"cat {BACKUP_DIR}/last-success 2>/dev/null").stdout.strip()
    evidence.add("last successful backup", last or "none yet")


@pytest.mark.check("check:E.11.backup_contains_no_plaintext_key")
def test_backup_encrypted_and_host_cannot_decrypt(host, evidence):
    newest = newest_backup(host)
    if not newest:
        pytest.skip("no backup on the host yet (ansible/backup.yml takes one)")
    info = host.run(f"openssl cms -cmsout -print -inform DER -in {newest}")
    text = info.stdout
    evidence.add("newest backup", newest)
    evidence.add(
        "CMS structure",
        "\n".join(line for line in text.splitlines() if "contentType" in line or "algorithm:" in line)[:1500],
    )
    assert "id-smime-ct-authEnvelopedData" in text and "aes-256-gcm" in text, (
        "E.11: the newest backup is not AES-256-GCM authenticated-enveloped data"
    )
    # the archive is not readable as plaintext (no tar header, no PEM key markers) ...
    raw = host.run(
        f"sh -c \"grep -c -a -e 'BEGIN .*PRIVATE KEY' -e 'ustar' {newest} || true\""
    ).stdout.strip()
    evidence.add("plaintext markers in the file", raw)
    assert raw == "0", f"E.11: plaintext markers in the backup file ({raw})"
    # ... and the host holds no key that could decrypt it: only the recipient certificate
    keys = host.run(
        "sh -c 'ls -l /etc/ckms-backup; grep -l PRIVATE /etc/ckms-backup/* /root/.ckms-restore-key.pem "
        "2>/dev/null || true'"
    ).stdout
    evidence.add("/etc/ckms-backup", keys.strip())
    assert "PRIVATE" not in host.run("cat /etc/ckms-backup/*").stdout, (
        "E.11: a private key in /etc/ckms-backup (the host could decrypt its backups)"
    )
    assert not host.file("/root/.ckms-restore-key.pem").exists, (
        "E.11: a backup decryption key is left on the host (/root/.ckms-restore-key.pem)"
    )


def _restored(host) -> dict | None:
    f = host.file(f"{HOME}/restored-from.json")
    return json.loads(f.content_string) if f.exists else None


@pytest.mark.check("check:F.49.restore_drill_passes")
def test_restore_drill_passes(host, evidence):
    info = _restored(host)
    if info is None:
        pytest.skip("no restore drill on this host yet (ansible/restore.yml)")
    fp = (
        host.run(f"openssl x509 -in {HOME}/ca/ca.pem -noout -fingerprint -sha256")
        .stdout.strip()
        .split("=")[1]
    )
    evidence.add("restored from", info)
    evidence.add("running CA", fp)
    assert fp == info["ca_sha256"]
    serial = host.file("/root/drill-serial")
    if serial.exists:  # the Molecule drill recorded a certificate issued before the backup
        s = serial.content_string.strip()
        # read from the restored database itself (no person's credential is needed to look)
        shown = host.run(
            f"runuser -u ckms -- /opt/ckms/venv/bin/python -c {shlex.quote(_CERT_ROW)} {HOME} {s.lower().lstrip('0')}"
        )
        evidence.add("certificate issued before the backup", shown.stdout[-600:] or shown.stderr[-600:])
        assert shown.rc == 0 and s.lower().lstrip("0") in shown.stdout.lower()


@pytest.mark.check("check:F.57.restore_then_self_test_before_service")
def test_restore_then_self_test_before_service(host, evidence):
    info = _restored(host)
    if info is None:
        pytest.skip("no restore drill on this host yet (ansible/restore.yml)")
    restored_at = int(host.run(f"stat -c %Y {HOME}/restored-from.json").stdout.strip())
    started = host.run(
        "systemctl show ckms-ca.service -p ActiveEnterTimestamp --timestamp=unix"
    ).stdout.strip()
    started_at = int(started.split("@")[-1]) if "@" in started else 0
    health = host.run(
        f"curl -s --cacert {HOME}/ca/ca.pem https://$(sed -n 's/^public_host = \"\\(.*\\)\"/\\1/p' "
        f"{HOME}/ckms.toml | head -1):8443/health"
    )
    evidence.add("restored at / daemon started at", {"restored": restored_at, "started": started_at})
    evidence.add("/health", health.stdout[:1000])
    assert started_at >= restored_at
    assert health.rc == 0 and json.loads(health.stdout)["status"] == "ok"
