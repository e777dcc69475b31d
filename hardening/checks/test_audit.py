"""Checks for the audit role (guidance F.12-F.15, A.06, A.31) on the CA server.

Kernel audit (auditd) cannot run inside the lab's containers: there the rules are verified at
configuration level -- the rule files, their syntax (the role's validator, since auditctl cannot
parse without kernel audit), that augenrules compiled exactly them, and that -e 2 comes last -- and
the run-time check (rules loaded, immutable) skips with that reason. On a real server it runs.
"""

from __future__ import annotations

import re

import pytest
from ckms_checks import in_container, policy
from ckms_kernel_audit import OBSERVED_FILE, enriched, observe_audited_action, records

# The CA hosts (harden.yml); make report and the Molecule scenarios (instances in group ca) both use this.
testinfra_hosts = ["ansible://ca"]

LINT = "/usr/local/lib/ckms/audit-rules-lint"


def compiled_rules(host) -> list[str]:
    f = host.file("/etc/audit/audit.rules")
    return (
        [ln.strip() for ln in f.content_string.splitlines() if ln.strip() and not ln.startswith("#")]
        if f.exists
        else []
    )


def watches(rules: list[str]) -> dict[str, str]:
    out = {}
    for r in rules:
        m = re.match(r"^-w (\S+) -p (\S+)", r)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _level(host, evidence) -> None:
    if in_container(host):
        evidence.add(
            "verification level",
            "configuration: auditd cannot run inside this lab container (kernel "
            "audit needs the host's PID namespace); rules verified as files, syntax and compiled set",
        )


@pytest.mark.check("check:F.12.auditd_watches_identity_and_config")
def test_auditd_watches_identity_and_config(host, evidence):
    _level(host, evidence)
    rules = compiled_rules(host)
    assert rules, "F.12: no compiled audit rules (/etc/audit/audit.rules)"
    lint = host.run(f"{LINT} /etc/audit/audit.rules")
    check = host.run("/sbin/augenrules --check")
    evidence.add("syntax check (audit-rules-lint)", f"rc={lint.rc} {lint.stderr.strip()}")
    evidence.add("augenrules --check", check.stdout.strip())
    evidence.add("rule count", len(rules))
    w = watches(rules)
    required = {}
    for var in (
        "audit_watch_identity",
        "audit_watch_privilege",
        "audit_watch_ssh",
        "audit_watch_ca",
        "audit_watch_keys",
        "audit_watch_config",
    ):
        for p in policy(host, var):
            required[p] = var
    missing = sorted(p for p in required if p not in w or "w" not in w[p])
    text = "\n".join(rules)
    syscalls = {
        k: bool(re.search(rf"-S [^ ]*{s}[^ ]* .*-k ckms-{k}", text))
        for k, s in (
            ("time", "settimeofday"),
            ("modules", "init_module"),
            ("perm", "chmod"),
            ("acl", "setxattr"),
        )
    }
    privileged = sorted(
        set(policy(host, "audit_privileged_commands")) - set(re.findall(r"-F path=(\S+)", text))
    )
    evidence.add("watched paths", w)
    evidence.add("syscall groups", syscalls)
    assert lint.rc == 0, f"F.12: audit rules do not parse: {lint.stderr.strip()}"
    assert "No change" in check.stdout, "F.12: /etc/audit/audit.rules is not the compiled rules.d set"
    assert not missing, f"F.12: paths not watched for writes: {missing}"
    assert all(syscalls.values()), f"F.12: system-call groups not audited: {syscalls}"
    assert not privileged, f"F.12: privileged commands not audited: {privileged}"
    if not in_container(host):
        # Run time: the kernel holds the watches, and a change to a watched identity file is recorded.
        loaded = watches(host.run("auditctl -l").stdout.splitlines())
        unloaded = sorted(p for p in required if p not in loaded)
        watched = records(observe_audited_action(host), key="ckms-identity")
        evidence.add(f"audit records of a chmod on {OBSERVED_FILE} done by this check", watched[:4])
        assert not unloaded, f"F.12: watches compiled but not loaded in the kernel: {unloaded}"
        assert any(f'name="{OBSERVED_FILE}"' in ln for ln in watched), (
            f"F.12: a change to {OBSERVED_FILE} made during the check left no audit record (key ckms-identity)"
        )


@pytest.mark.check("check:F.13.audit_config_writable_by_admin_only")
def test_audit_config_writable_by_admin_only(host, evidence):
    _level(host, evidence)
    rules = compiled_rules(host)
    paths = ["/etc/audit", "/etc/audit/rules.d", "/etc/audit/auditd.conf", "/etc/audit/audit.rules"]
    paths += sorted(host.run("ls -d /etc/audit/rules.d/*.rules").stdout.split())
    modes, bad = {}, []
    for p in paths:
        f = host.file(p)
        modes[p] = f"{f.mode:04o} {f.user}:{f.group}"
        if f.user != "root" or f.mode & 0o022:
            bad.append(p)
    evidence.add("modes", modes)
    evidence.add("last rule", rules[-1] if rules else None)
    assert not bad, f"F.13: audit configuration writable by others than root: {bad}"
    assert rules and rules[-1] == "-e 2", "F.13: audit rules are not made immutable (-e 2 as the last rule)"
    if not in_container(host):
        # Run time: the kernel's rule set is locked (enabled 2): not even root changes it before a reboot.
        status = host.run("auditctl -s").stdout
        evidence.add("auditctl -s", status)
        assert re.search(r"^enabled 2$", status, re.M), "F.13: the loaded audit rules are not immutable"


@pytest.mark.check("check:F.14.auditd_records_enriched")
def test_auditd_recordsenriched(host, evidence):
    _level(host, evidence)
    conf = dict(
        re.findall(r"^\s*(\w+)\s*=\s*(\S+)", host.file("/etc/audit/auditd.conf").content_string, re.M)
    )
    rules = compiled_rules(host)
    unkeyed = [r for r in rules if (r.startswith("-w") or r.startswith("-a")) and " -k " not in r]
    evidence.add(
        "auditd.conf",
        {
            k: conf.get(k)
            for k in ("log_format", "max_log_file_action", "disk_full_action", "name_format", "flush")
        },
    )
    evidence.add("rules without a key", unkeyed)
    assert conf.get("log_format", "").upper() == "ENRICHED", "F.14: records do not resolve who (log_format)"
    assert conf.get("max_log_file_action", "").lower() == "keep_logs", "F.14: audit logs rotate away"
    assert not unkeyed, f"F.14: rules without a key (action not attributable): {unkeyed}"
    if not in_container(host):
        # Run time: the record of an action done now carries its key and the names, not only numbers.
        syscall = [
            ln for ln in records(observe_audited_action(host), key="ckms-identity") if "type=SYSCALL" in ln
        ]
        names = enriched(syscall[0]) if syscall else {}
        evidence.add("SYSCALL record of this check's chmod (raw)", syscall[:1])
        evidence.add("names in the record (ENRICHED)", names)
        assert syscall, f"F.14: no SYSCALL record of a chmod on {OBSERVED_FILE} made during the check"
        assert names.get("AUID") and names.get("UID"), "F.14: the record does not name the login and the user"


@pytest.mark.check("check:F.15.account_change_alerts")
def test_account_change_alerts(host, evidence):
    unit = host.run("systemctl show -p ActiveState -p UnitFileState -p Paths ckms-account-watch.path").stdout
    evidence.add("path unit", unit)
    state = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    watched = (
        host.file("/etc/systemd/system/ckms-account-watch.path").content_string
        if host.file("/etc/systemd/system/ckms-account-watch.path").exists
        else ""
    )
    need = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/sudoers", "/etc/sudoers.d"]
    missing = [p for p in need if f"PathChanged={p}\n" not in watched]
    last = host.run("journalctl -q -t ckms-audit -n 3 --no-pager").stdout.strip()
    evidence.add("last alerts", last or "none yet")
    assert state.get("ActiveState") == "active", "F.15: account-change watch is not active"
    assert state.get("UnitFileState") == "enabled", "F.15: account-change watch is not enabled at boot"
    assert not missing, f"F.15: not watched for account/ACL changes: {missing}"
    snap = host.file("/var/lib/ckms-audit/account-snapshot")
    assert snap.exists, "F.15: no baseline snapshot for alerts"
    # The persons (one account each, in their role's group) and the sudo rules through which each role
    # group acts as the CA user are what a change is compared with: a person added to a second role
    # group, or a role's ckms subcommands widened, must differ from this baseline and raise an alert.
    text = snap.content_string
    # Only what exists on this host is compared (a role's own scenario may run without os_hardening).
    persons = [a["name"] for a in policy(host, "os_hardening_accounts") or [] if host.user(a["name"]).exists]
    unseen = [p for p in persons if f"\n{p}:" not in text]
    has_rules = host.file("/etc/sudoers.d/10-ckms-roles").exists
    rules = "== /etc/sudoers.d/10-ckms-roles" in text and "/bin/ckms " in text
    evidence.add(
        "persons in the baseline", {p: p not in unseen for p in persons} or "no person accounts here"
    )
    evidence.add(
        "role sudo rules (ckms as the CA user) in the baseline", rules if has_rules else "no rules here"
    )
    if not persons and not has_rules:
        evidence.limit("no person accounts or role sudo rules on this host (os_hardening not applied)")
    assert not unseen, f"F.15: persons' accounts missing from the alert baseline: {unseen}"
    assert rules or not has_rules, "F.15: the role groups' sudo rules are not in the alert baseline"


@pytest.mark.check("check:A.06.acl_change_audited")
def test_acl_change_audited(host, evidence):
    _level(host, evidence)
    rules = compiled_rules(host)
    w = watches(rules)
    need = ["/etc/sudoers", "/etc/sudoers.d", "/etc/group", "/etc/passwd"]
    evidence.add("watches", {p: w.get(p) for p in need})
    acl = [r for r in rules if "-k ckms-acl" in r or "-k ckms-perm" in r]
    evidence.add("permission/ACL syscall rules", acl)
    assert all(p in w for p in need), "A.06: access-control files not audited"
    assert acl, "A.06: permission and ACL changes (chmod/chown/setxattr) not audited"
    if not in_container(host):
        # Run time: a permission change on an access-control file, made now, is in the kernel's log.
        rec = [ln for ln in records(observe_audited_action(host), key="ckms-identity") if "type=PATH" in ln]
        evidence.add(f"PATH record of this check's chmod on {OBSERVED_FILE}", rec[:2])
        assert any(f'name="{OBSERVED_FILE}"' in ln for ln in rec), (
            f"A.06: a permission change on {OBSERVED_FILE} made during the check was not audited"
        )


@pytest.mark.check("check:A.31.kernel_audit_names_operator")
def test_kernel_audit_names_operator(host, evidence):
    """A.31's third log: the kernel's audit log names who acted as root. An operator action (a command
    run through sudo by the automation account) carries the login identity (auid) beside the root uid, so
    the Linux audit log, the application trail and the HSM log can be joined on the person."""
    rules = compiled_rules(host)
    automation = [r for r in rules if "-S execve" in r and "-k ckms_automation" in r]
    evidence.add("execve rules of the automation account", automation)
    assert automation, "A.31: commands of the automation account are not audited (no execve rule)"
    if in_container(host):
        evidence.add(
            "verification level",
            "configuration: auditd cannot run inside this lab container; the compiled rule that records "
            "every command of the automation account is verified instead",
        )
        return
    events = observe_audited_action(host)
    execve = [ln for ln in records(events, key="ckms_automation") if "type=SYSCALL" in ln]
    sudo = records(events, kind="USER_CMD")
    names = enriched(execve[0]) if execve else {}
    evidence.add("SYSCALL record of the command (key ckms_automation)", execve[:1])
    evidence.add("names in it", {k: names.get(k) for k in ("AUID", "UID", "EUID")})
    evidence.add("sudo's USER_CMD record", sudo[:1])
    assert execve, "A.31: an operator command run during the check left no execve record"
    assert names.get("AUID") not in (None, "", "unset") and names.get("UID") == "root", (
        f"A.31: the record does not name the operator behind root: {names}"
    )
    assert sudo, "A.31: sudo did not record the operator's command (USER_CMD)"


# Was A.31's check; kernel audit cannot run in the lab containers, so A.31 is now checked through the
# HSM event log and the application trail (test_hsm_events.py) and this stays as F.13's run-time half.
@pytest.mark.check("check:F.13.auditd_rules_loaded")
def test_auditd_rules_loaded(host, evidence):
    if in_container(host):
        # What can be seen here: the unit is enabled and the compiled rule set (what augenrules loads at
        # boot) is complete and ends immutable; that the kernel holds it needs a VM host.
        enabled = host.run("systemctl is-enabled auditd.service").stdout.strip()
        rules = compiled_rules(host)
        evidence.add("auditd.service", enabled)
        evidence.add("compiled rule count (/etc/audit/audit.rules)", len(rules))
        evidence.limit(
            "kernel audit is unavailable inside the lab container: the loaded rule set cannot be read "
            "(auditctl); the compiled set that auditd loads at boot and the enabled unit are verified instead"
        )
        assert enabled == "enabled", "F.13: auditd is not enabled"
        assert rules and rules[-1] == "-e 2", "F.13: the compiled audit rules are missing or not immutable"
        return
    status = host.run("auditctl -s")
    listed = host.run("auditctl -l")
    evidence.add("auditctl -s", status.stdout)
    evidence.add("loaded rule count", len(listed.stdout.splitlines()))
    assert "enabled 2" in status.stdout, "F.13: audit rules not loaded or not immutable"
    assert len(listed.stdout.splitlines()) >= len(compiled_rules(host)) - 6, (
        "F.13: fewer rules loaded than compiled"
    )
