"""Breakage tests: every hardening check must FAIL, naming its guidance item, when its control is broken.

First the whole set of hardening checks (hardening/checks, the same modules ``make report`` runs) must pass
on the freshly converged CA baseline. Then controls are broken on the host -- root SSH login re-enabled,
the automation account's key freed of its address, a port opened, an account and a sudo grant added, a file under AIDE watch modified, audit rules broken,
the virus-scan timer stopped, an unsigned package source added, USB storage allowed -- and the checks run
again: each matching check must fail with a message that names the item. The real-time alerts (F.15
account change, F.48 AIDE) must have fired too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[5]
CHECKS = ["test_os_hardening.py", "test_audit.py", "test_integrity.py", "test_antimalware.py"]

# (what is broken, shell command that breaks it, check that must fail, item named in its message)
BREAKS = [
    (
        "root SSH login re-enabled",
        "sed -i 's/^PermitRootLogin no$/PermitRootLogin yes/' /etc/ssh/sshd_config",
        "check:F.06.l.root_login_closed_everywhere",
        "F.06 l",
    ),
    (
        "automation account's key usable from any address",
        'sed -i \'s/^from="[^"]*",//\' /var/lib/ckms-automation/.ssh/authorized_keys',
        "check:F.06.b.automation_account_scoped",
        "F.06 b",
    ),
    (
        "port 9999 opened in the host firewall",
        "nft add rule inet ckms_host input tcp dport 9999 accept",
        "check:F.06.j.ports_closed",
        "F.06 j",
    ),
    (
        "a service listening on port 9999",
        "setsid python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        ' s.bind(("0.0.0.0", 9999)); s.listen(); time.sleep(600)\' >/dev/null 2>&1 < /dev/null & sleep 1',
        "check:F.06.g.no_unexpected_listeners",
        "F.06 g",
    ),
    (
        "an account with a login shell added",
        "useradd -m -s /bin/bash mallory",
        "check:F.06.d.only_expected_accounts",
        "F.06 d",
    ),
    (
        "sudo ALL granted",
        "echo 'admin-1 ALL=(ALL) ALL' > /etc/sudoers.d/zz-broad && chmod 440 /etc/sudoers.d/zz-broad",
        "check:F.06.d.sudo_command_allowlist",
        "F.06 d",
    ),
    (
        "the apt timer of unattended upgrades masked (settings left in place)",
        "systemctl stop apt-daily-upgrade.timer; systemctl mask apt-daily-upgrade.timer",
        "check:F.06.l.security_updates_configured",
        "F.06 l",
    ),
    (
        "a file under AIDE watch modified",
        "echo '# tampered' >> /etc/issue.net",
        "check:F.48.aide_detects_modified_file",
        "F.48",
    ),
    (
        "an audit rule with bad syntax",
        "echo '-w /etc/hosts -p z -k bad' >> /etc/audit/rules.d/30-ckms-watches.rules"
        " && augenrules >/dev/null",
        "check:F.12.auditd_watches_identity_and_config",
        "F.12",
    ),
    (
        "audit rules no longer immutable",
        "sed -i 's/^-e 2$/-e 1/' /etc/audit/rules.d/99-ckms-finalize.rules && augenrules >/dev/null",
        "check:F.13.audit_config_writable_by_admin_only",
        "F.13",
    ),
    (
        "virus-scan timer stopped",
        "systemctl disable --now ckms-av-scan.timer",
        "check:F.10.a.av_scan_scheduled",
        "F.10 a",
    ),
    (
        "unsigned package source",
        "echo 'deb [trusted=yes] http://192.0.2.1/debian bookworm main'"
        " > /etc/apt/sources.list.d/zz-unsigned.list",
        "check:F.11.a.package_signatures_enforced",
        "F.11 a",
    ),
    (
        "USB storage allowed again",
        "rm -f /etc/modprobe.d/ckms-removable-media.conf",
        "check:F.06.i.usb_storage_disabled",
        "F.06 i",
    ),
    (
        "password policy weakened",
        "sed -i 's/^minlen = .*/minlen = 6/' /etc/security/pwquality.conf",
        "check:F.06.f.password_quality_policy",
        "F.06 f",
    ),
    (
        "setuid bit back on chsh",
        "chmod u+s /usr/bin/chsh",
        "check:F.06.b.privileged_commands_restricted",
        "F.06 b",
    ),
]


def run_checks(request, out: Path) -> dict[str, list[dict]]:
    inventory = request.config.getoption("ansible_inventory")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        *[f"hardening/checks/{m}" for m in CHECKS],
        "--connection=ansible",
        f"--ansible-inventory={inventory}",
        "--hosts=ansible://all",
        f"--ckms-results={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert out.exists(), f"the checks did not run:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    by_check: dict[str, list[dict]] = {}
    for rec in json.loads(out.read_text()):
        by_check.setdefault(rec["check"], []).append(rec)
    return by_check


@pytest.fixture(scope="module")
def results(request, host):
    tmp = Path(tempfile.mkdtemp(prefix="ckms-breakage-"))
    before = run_checks(request, tmp / "before.json")
    for _, cmd, _, _ in BREAKS:
        r = host.run(cmd)
        assert r.rc == 0, f"could not break the control: {cmd}: {r.stderr}"
    host.run("sleep 2; systemctl start ckms-aide-check.service")  # the periodic check, now
    after = run_checks(request, tmp / "after.json")
    return before, after


def test_all_checks_pass_before_breaking(results):
    before, _ = results
    failed = {c: r[0]["message"] for c, r in before.items() if any(x["outcome"] == "failed" for x in r)}
    assert not failed, f"checks failing on the freshly hardened host: {failed}"
    assert len(before) >= 30


@pytest.mark.parametrize(
    "what,cmd,check,item", BREAKS, ids=[b[2].removeprefix("check:") + ":" + b[0] for b in BREAKS]
)
def test_check_fails_when_control_broken(results, what, cmd, check, item):
    _, after = results
    recs = after.get(check)
    assert recs, f"{check} did not run"
    rec = recs[0]
    assert rec["outcome"] == "failed", f"{check} still passes with {what}"
    assert item in (rec["message"] or ""), f"{check} fails without naming {item}: {rec['message']}"


def test_account_change_alert_fired(host, results):
    alerts = host.run("journalctl -q -t ckms-audit --no-pager").stdout
    assert "F.15" in alerts and "mallory" in alerts, (
        f"no real-time alert for the new account: {alerts[-500:]}"
    )


def test_aide_alert_fired(host, results):
    alerts = host.run("journalctl -q -t ckms-integrity -p alert --no-pager").stdout
    assert "F.48" in alerts and "issue.net" in alerts, f"no AIDE alert for the modified file: {alerts[-500:]}"
