"""The kernel-audit observation of the VM host's checks (hardening/checks/test_audit.py): which records
count as the action's, and the names ENRICHED adds. Canned ``ausearch --raw`` output stands in for the
VM (the live path runs in make lab LAB_CA=vm's report); what matters here is that records older than
the action, or of other processes, never make a check pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = REPO / "hardening" / "checks"

GS = "\x1d"
RAW = "\n".join(
    [
        # an older chmod of the same file, before the action: must not count
        'type=SYSCALL msg=audit(1764561590.100:70): arch=c000003e syscall=90 success=yes uid=0 auid=900 comm="chmod"'
        f' exe="/usr/bin/chmod" key="ckms-identity"{GS}AUID="ckms-automation" UID="root"',
        # sudo's record of the command
        "node=ca1 type=USER_CMD msg=audit(1764561600.010:81): pid=1 uid=900 auid=900 msg='cwd=\"/\" cmd=63686D6F64 res=success'"
        f'{GS}UID="ckms-automation" AUID="ckms-automation"',
        # the chmod itself: its execve (automation key) and the watch's SYSCALL + PATH (identity key)
        'type=SYSCALL msg=audit(1764561600.020:82): arch=c000003e syscall=59 success=yes uid=0 auid=900 comm="chmod"'
        f' exe="/usr/bin/chmod" key="ckms_automation"{GS}ARCH=x86_64 SYSCALL=execve AUID="ckms-automation" UID="root"',
        'type=SYSCALL msg=audit(1764561600.030:83): arch=c000003e syscall=268 success=yes uid=0 auid=900 comm="chmod"'
        f' exe="/usr/bin/chmod" key="ckms-identity"{GS}ARCH=x86_64 SYSCALL=fchmodat AUID="ckms-automation" UID="root"',
        'type=PATH msg=audit(1764561600.030:83): item=0 name="/etc/group" inode=1 nametype=NORMAL',
        # another process in the same second: not the action's
        'type=SYSCALL msg=audit(1764561600.040:84): arch=c000003e syscall=59 success=yes uid=0 auid=900 comm="python3"'
        f' key="ckms_automation"{GS}AUID="ckms-automation" UID="root"',
        "t0=1764561600",
    ]
)


class _Backend:
    def get_hostname(self) -> str:
        return "ca1"


class _Run:
    def __init__(self, stdout: str) -> None:
        self.stdout, self.rc, self.stderr = stdout, 0, ""


class _Host:
    backend = _Backend()

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str) -> _Run:
        self.commands.append(command)
        return _Run(RAW)


def _module():
    sys.path.insert(0, str(CHECKS))
    try:
        spec = importlib.util.spec_from_file_location("ckms_kernel_audit", CHECKS / "ckms_kernel_audit.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(CHECKS))


def test_only_the_actions_own_records_after_it_started_count(monkeypatch) -> None:
    mod = _module()
    monkeypatch.setattr(mod, "policy", lambda host, name: "ckms-automation")
    host = _Host()
    events = mod.observe_audited_action(host)
    assert sorted(events) == ["81", "82", "83"]  # not 70 (before t0), not 84 (another process)
    assert 'runuser -u "$u" -- sudo -n chmod' in host.commands[0] and "u=ckms-automation" in host.commands[0]
    assert mod.observe_audited_action(host) is events and len(host.commands) == 1  # once per host
    watched = mod.records(events, key="ckms-identity")
    assert any('name="/etc/group"' in ln for ln in watched)
    execve = [ln for ln in mod.records(events, key="ckms_automation") if "type=SYSCALL" in ln]
    assert len(execve) == 1 and mod.enriched(execve[0])["AUID"] == "ckms-automation"
    assert mod.enriched(execve[0])["UID"] == "root"
    assert len(mod.records(events, kind="USER_CMD")) == 1


def test_no_record_after_the_action_means_nothing_observed(monkeypatch) -> None:
    mod = _module()
    monkeypatch.setattr(mod, "policy", lambda host, name: None)
    host = _Host()
    host.run = lambda command: _Run(RAW.replace("t0=1764561600", "t0=1764561700"))  # type: ignore[method-assign]
    assert mod.observe_audited_action(host) == {}
