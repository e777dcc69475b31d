"""Checks for the os_hardening role (guidance F.05, F.06 a-l, F.07) on the CA server.

Run over SSH against an inventory, e.g.::

    pytest hardening/checks --hosts='ansible://ca' --ansible-inventory=inventories/lab/generated/hosts.yml

Each check reads the policy it enforces from the role's defaults (``roles/os_hardening/defaults/main.yml``),
overridden by the host's inventory variables, so the role and its checks cannot drift apart silently.
Checks that need the host's own kernel or firmware (AppArmor enforcement, secure boot) verify inside a lab
container what is visible there and record what is not with ``evidence.limit`` (shown in the report next to
the item); on a real server they check the property itself.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ckms_checks import in_container, inventory_vars, policy

# The CA hosts (harden.yml); make report and the Molecule scenarios (instances in group ca) both use this.
testinfra_hosts = ["ansible://ca"]

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NOLOGIN = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync"}
STRONG_KEX = {
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "mlkem768x25519-sha256",
}
STRONG_CIPHERS = {
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
}
STRONG_MACS = {"hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"}


def sshd_t(host, ctx: str | None = None) -> dict[str, str]:
    cmd = "/usr/sbin/sshd -T" + (f" -C {ctx}" if ctx else "")
    out = host.check_output(cmd)
    conf: dict[str, str] = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k.lower(), v.strip())
    return conf


def allowed_inbound(host) -> set[tuple[str, int]]:
    """(proto, port) the flow model allows to this host, plus management SSH."""
    role = policy(host, "ckms_role") or "ca"
    flows = policy(host, "ckms_flows")
    if not flows:
        from ckms_lab.model import default_flows

        flows = default_flows(with_db=True, with_hub=True)
    allowed = {(f["proto"], int(f["port"])) for f in flows if role in f["dst"]}
    allowed.add(("tcp", int(policy(host, "os_hardening_firewall_mgmt_port") or 22)))
    return allowed


# ------------------------------------------------------------------------------------------- F.05
@pytest.mark.check("check:F.05.os_hardening_baseline_applied")
def test_baseline_applied(host, evidence):
    record = host.file("/var/lib/ckms-hardening/os_hardening.json")
    assert record.exists, (
        "F.05: os_hardening has not been applied (no /var/lib/ckms-hardening/os_hardening.json)"
    )
    data = json.loads(record.content_string)
    evidence.add("applied concerns", data["concerns"])
    off = sorted(k for k, v in data["concerns"].items() if not v)
    assert not off, f"F.05: hardening concerns switched off on this host: {off}"


# ------------------------------------------------------------------------------------------ F.06 a
@pytest.mark.check("check:F.06.a.no_unneeded_packages")
def test_no_unneeded_packages(host, evidence):
    absent = policy(host, "os_hardening_packages_absent")
    out = host.run("dpkg-query -W -f='${Package} ${db:Status-Status}\\n' " + " ".join(absent))
    installed = sorted(line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed"))
    evidence.add("must be absent", absent)
    evidence.add("installed of those", installed)
    evidence.add("installed package count", host.run("dpkg-query -W | wc -l").stdout.strip())
    assert not installed, f"F.06 a: non-essential packages installed: {installed}"


# ------------------------------------------------------------------------------------------ F.06 b
@pytest.mark.check("check:F.06.b.privileged_commands_restricted")
def test_privileged_commands_restricted(host, evidence):
    allowed = set(policy(host, "os_hardening_suid_allowed"))
    found = host.run("find / -xdev \\( -perm -4000 -o -perm -2000 \\) -type f 2>/dev/null").stdout.split()
    evidence.add("setuid/setgid files", sorted(found))
    unexpected = sorted(set(found) - allowed)
    su = host.file("/etc/pam.d/su").content_string
    su_restricted = re.search(r"^auth\s+required\s+pam_wheel\.so.*group=\S+", su, re.M)
    evidence.add("su restricted by pam_wheel", bool(su_restricted))
    assert not unexpected, f"F.06 b: setuid/setgid programs outside the allow-list: {unexpected}"
    assert su_restricted, "F.06 b: su is not restricted to the administrators' group (pam_wheel)"


# The automation account (os_hardening_automation_*): Ansible's way in after hardening. Root-equivalent by
# design (configuration management), so it is bounded by who (the controller's keys), where from (from= and
# sshd) and what is recorded (its sudo log; audit key ckms_automation where the audit role ran).
def automation_user(host) -> list[str]:
    """The automation account's name in a list (empty when the role's automation concern is off)."""
    if not policy(host, "os_hardening_automation_enabled"):
        return []
    return [str(policy(host, "os_hardening_automation_user") or "ckms-automation")]


def _sshd_values(host, ctx: str, key: str) -> list[str]:
    """Every value sshd -T prints for ``key`` (AllowGroups, DenyUsers: one line per entry)."""
    out = host.check_output(f"/usr/sbin/sshd -T -C {ctx}")
    return [w for ln in out.splitlines() if ln.lower().startswith(key + " ") for w in ln.split()[1:]]


def _resolved(value, fallback):
    """An inventory/default value, or ``fallback`` where it is still a template (role defaults)."""
    return fallback if value is None or "{{" in str(value) else value


@pytest.mark.check("check:F.06.b.automation_account_scoped")
def test_automation_account_scoped(host, evidence):
    users = automation_user(host)
    assert users, "F.06 b: no automation account (os_hardening_automation_enabled is off)"
    user = users[0]
    acct = host.user(user)
    assert acct.exists, f"F.06 b: the automation account {user} does not exist"
    group = _resolved(policy(host, "os_hardening_automation_group"), user)
    controller = _controller_address(host)
    want_from = _resolved(policy(host, "os_hardening_automation_from"), [controller] if controller else [])
    shadow = host.run(f"getent shadow {user}").stdout.split(":")
    pw = shadow[1] if len(shadow) > 1 else ""
    keys_file = f"{acct.home}/.ssh/authorized_keys"
    keys = [
        ln for ln in host.run(f"cat {keys_file}").stdout.splitlines() if ln.strip() and not ln.startswith("#")
    ]
    here_ctx, away_ctx = (
        f"user={user},host=controller,addr={controller}",
        f"user={user},host=elsewhere.example,addr=192.0.2.10",
    )
    here = sshd_t(host, here_ctx) if controller else {}
    here_groups = _sshd_values(host, here_ctx, "allowgroups") if controller else []
    here_denied = _sshd_values(host, here_ctx, "denyusers") if controller else []
    away_denied = _sshd_values(host, away_ctx, "denyusers")
    grants = _sudo_grants(host, user)
    logfile = str(policy(host, "os_hardening_automation_sudo_logfile") or "/var/log/sudo.log")
    logged = host.run(f"grep -c ' : {user} : ' {logfile}").stdout.strip() or "0"
    dropin = str(policy(host, "os_hardening_automation_sudoers") or "/etc/sudoers.d/20-ckms-automation")
    sudoers = host.run(f"cat {dropin}").stdout
    rules = host.run("cat /etc/audit/rules.d/*.rules 2>/dev/null").stdout
    audit = [ln for ln in rules.splitlines() if "ckms_automation" in ln]
    evidence.add(
        "account",
        {
            "uid": acct.uid,
            "group": acct.group,
            "groups": acct.groups,
            "shell": acct.shell,
            "password": pw[:2],
        },
    )
    evidence.add("authorized_keys (options, key type)", [ln.rsplit(" ", 2)[0][:160] for ln in keys])
    evidence.add(
        "sshd -T from the controller",
        {
            **{
                k: here.get(k)
                for k in (
                    "allowtcpforwarding",
                    "allowagentforwarding",
                    "x11forwarding",
                    "authenticationmethods",
                )
            },
            "denyusers": here_denied,
            "allowgroups": here_groups,
        },
    )
    evidence.add("sshd -T from 192.0.2.10", {"denyusers": away_denied})
    evidence.add("sudo grants", grants)
    evidence.add(f"sudo records of {user} in {logfile}", logged)
    evidence.add(
        "audit rules keyed ckms_automation", audit or "no audit rules on this host (audit role not applied)"
    )
    problems = []
    if acct.uid >= 1000 or acct.uid == 0:
        problems.append(f"uid {acct.uid} is not a system account's")
    # besides its own group, only the dedicated group that may start sudo (os_hardening sudo_group concern)
    sudo_group = (
        policy(host, "os_hardening_sudo_group_name")
        if policy(host, "os_hardening_sudo_group_enabled")
        else None
    )
    if acct.group != group or set(acct.groups) - {group, sudo_group}:
        problems.append(
            f"groups {acct.groups}, want only its own group {group}"
            + (f" and {sudo_group}" if sudo_group else "")
        )
    if not pw or pw[0] not in "!*":
        problems.append("password not locked (key login only)")
    if not keys:
        problems.append(f"no key in {keys_file}")
    for ln in keys:
        m = re.match(r'^(\S*)from="([^"]+)"', ln)
        opts = ln.split(" ", 1)[0]
        if not m:
            problems.append(f"a key without from= restriction: {ln[:60]}")
        elif want_from and sorted(m.group(2).split(",")) != sorted(want_from):
            problems.append(f"key usable from {m.group(2)}, want {','.join(want_from)}")
        for opt in ("no-port-forwarding", "no-agent-forwarding", "no-X11-forwarding"):
            if opt not in opts:
                problems.append(f"key without {opt}")
    if user not in away_denied:
        problems.append("sshd does not refuse the account from other addresses (no Match User ... DenyUsers)")
    if controller:
        if user in here_denied:
            problems.append(f"sshd refuses the account from the controller {controller}")
        for k, want in (
            ("allowtcpforwarding", "no"),
            ("allowagentforwarding", "no"),
            ("x11forwarding", "no"),
            ("authenticationmethods", "publickey"),
        ):
            if here.get(k) != want:
                problems.append(f"from the controller {k} is {here.get(k)}, want {want}")
        if group not in here_groups:
            problems.append(f"sshd's AllowGroups lacks {group}")
    if not grants:
        problems.append("no sudo for the account (Ansible cannot become root)")
    if f'logfile="{logfile}"' not in sudoers and f"logfile={logfile}" not in sudoers:
        problems.append(f"{dropin} does not send the account's sudo log to {logfile}")
    if not int(logged):
        problems.append(f"no sudo record of {user} in {logfile} (this check's own commands ran through it)")
    if (
        "/etc/audit/rules.d/40-ckms-syscalls.rules"
        in host.run("ls /etc/audit/rules.d/*.rules 2>/dev/null").stdout
    ):
        if not any(f"auid={acct.uid} " in ln for ln in audit):
            problems.append(f"no audit rule keyed ckms_automation for auid {acct.uid}")
    assert not problems, f"F.06 b: automation account {user} not scoped: {problems}"


@pytest.mark.check("check:F.06.b.ansible_manages_through_automation_account")
def test_ansible_manages_through_automation_account(host, request, evidence):
    # Ansible manages the hardened host through the account (root login closed): an ad-hoc command through
    # the inventory becomes uid 0 by sudo from the automation account
    inventory = request.config.getoption("ansible_inventory", None)
    if getattr(host.backend, "NAME", "") != "ansible" or not inventory:
        pytest.skip("F.06 b: the host is not reached through an Ansible inventory")
    users = automation_user(host)
    assert users, "F.06 b: no automation account (os_hardening_automation_enabled is off)"
    name = host.backend.host
    v = inventory_vars(host)
    exe = Path(sys.executable).parent / "ansible"
    proc = subprocess.run(
        [str(exe) if exe.exists() else "ansible", name, "-i", str(inventory), "-b",
         "-m", "ansible.builtin.shell", "-a", 'echo "via=$SUDO_USER"; id'],
        capture_output=True, text=True, timeout=180,
        env=dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1"),
    )  # fmt: skip
    out = proc.stdout
    via = re.search(r"via=(\S*)", out)
    uid = re.search(r"uid=(\d+)", out)
    evidence.add(
        "inventory connection",
        {"ansible_user": v.get("ansible_user"), "ansible_become": v.get("ansible_become")},
    )
    evidence.add(
        f"ansible {name} -b -m shell -a 'echo via=$SUDO_USER; id'", (out or proc.stderr).strip()[-600:]
    )
    assert proc.returncode == 0, (
        f"F.06 b: Ansible cannot manage the host: {(proc.stdout + proc.stderr)[-400:]}"
    )
    assert uid and uid.group(1) == "0", "F.06 b: Ansible did not become root on the host"
    assert via and via.group(1) == users[0], (
        f"F.06 b: Ansible became root through {via.group(1) if via else 'no sudo'}, not the automation account"
    )


# ------------------------------------------------------------------------------------------ F.06 c
def _mode_ok(actual: int, limit: int) -> bool:
    return actual & ~limit == 0


@pytest.mark.check("check:F.06.c.sensitive_file_modes")
def test_sensitive_file_modes(host, evidence):
    problems, seen = [], {}
    for spec in policy(host, "os_hardening_file_modes"):
        f = host.file(spec["path"])
        if not f.exists:
            continue
        limit = int(spec["mode"], 8)
        seen[spec["path"]] = f"{f.mode:04o} {f.user}:{f.group}"
        if not _mode_ok(f.mode, limit):
            problems.append(f"{spec['path']} mode {f.mode:04o} wider than {spec['mode']}")
        if spec.get("owner") and f.user != spec["owner"]:
            problems.append(f"{spec['path']} owned by {f.user}, not {spec['owner']}")
    ww = host.run(
        "find /etc /usr /opt /var/lib -xdev -type f -perm -0002 2>/dev/null | head -20"
    ).stdout.split()
    evidence.add("modes", seen)
    evidence.add("world-writable files in /etc /usr /opt /var/lib", ww)
    problems += [f"{p} is world-writable" for p in ww]
    assert not problems, f"F.06 c: {problems}"


# ------------------------------------------------------------------------------------------ F.06 d
@pytest.mark.check("check:F.06.d.only_expected_accounts")
def test_only_expected_accounts(host, evidence):
    expected = {a["name"] for a in policy(host, "os_hardening_accounts")}
    expected |= set(policy(host, "os_hardening_accounts_login_allowed"))
    expected |= set(automation_user(host))  # a known entity, checked by F.06.b.automation_account_scoped
    rows = [line.split(":") for line in host.check_output("getent passwd").splitlines()]
    login = sorted(r[0] for r in rows if r[6] not in NOLOGIN)
    uid0 = sorted(r[0] for r in rows if r[2] == "0")
    evidence.add("accounts with a login shell", login)
    evidence.add("expected", sorted(expected))
    evidence.add("uid 0", uid0)
    unexpected = sorted(set(login) - expected)
    assert uid0 == ["root"], f"F.06 d: accounts with uid 0 besides root: {uid0}"
    assert not unexpected, f"F.06 d: unexpected accounts with a login shell: {unexpected}"


def _sudo_grants(host, user: str) -> list[str]:
    out = host.run(f"sudo -n -l -U {user}").stdout
    return (
        [
            line.strip()
            for line in out.split("may run the following commands", 1)[-1].splitlines()
            if line.strip().startswith("(")
        ]
        if "may run" in out
        else []
    )


@pytest.mark.check("check:F.06.d.sudo_command_allowlist")
def test_sudo_command_allowlist(host, evidence):
    rows = [line.split(":") for line in host.check_output("getent passwd").splitlines()]
    users = [r[0] for r in rows if r[0] != "root"]
    automation = automation_user(host)
    grants, broad = {}, []
    for u in users:
        g = _sudo_grants(host, u)
        if g:
            grants[u] = g
            if u in automation:  # root-equivalent by design, bounded and logged: automation_account_scoped
                continue
            for line in g:
                cmds = line.split(")", 1)[1].replace("NOPASSWD:", "").replace("PASSWD:", "")
                if any(c.strip() == "ALL" or c.strip().endswith("sh") for c in cmds.split(",")):
                    broad.append(f"{u}: {line}")
    evidence.add("sudo grants per account", grants)
    evidence.add("automation account (checked by F.06.b.automation_account_scoped)", automation or "none")
    dropins = sorted(host.run("ls -A /etc/sudoers.d").stdout.split())
    evidence.add("sudoers.d", dropins)
    # A grant that asks for the account's password is no grant when that password is locked (persons log
    # in with keys): the administrator could not start the CA service, the auditor not read the journal.
    shadow = {r.split(":")[0]: r.split(":")[1] for r in host.check_output("getent shadow").splitlines()}
    unusable = [
        f"{u}: {line}"
        for u, lines in grants.items()
        if u not in automation and shadow.get(u, "!")[:1] in ("!", "*", "")
        for line in lines
        if "NOPASSWD:" not in line
    ]
    evidence.add("grants that need a password the account does not have", unusable or "none")
    assert not broad, f"F.06 d: sudo grants beyond named commands: {broad}"
    assert not unusable, f"F.06 d: sudo grants no one can use (password locked, no NOPASSWD): {unusable}"


# ------------------------------------------------------------------------------------------ F.06 f
@pytest.mark.check("check:F.06.f.password_quality_policy")
def test_password_quality_policy(host, evidence):
    want = policy(host, "os_hardening_pwquality")
    conf = {}
    for line in host.file("/etc/security/pwquality.conf").content_string.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            k, _, v = line.partition("=")
            conf[k.strip()] = v.strip() or True
    stack = host.file("/etc/pam.d/common-password").content_string
    evidence.add("pwquality.conf", conf)
    evidence.add("pam password stack", [ln for ln in stack.splitlines() if ln.startswith("password")])
    assert re.search(r"^password\s+requisite\s+pam_pwquality\.so", stack, re.M), (
        "F.06 f: pam_pwquality not in use"
    )
    assert int(conf.get("minlen", 0)) >= int(want["minlen"]), (
        f"F.06 f: minlen {conf.get('minlen')} < {want['minlen']}"
    )
    assert int(conf.get("minclass", 0)) >= int(want["minclass"]), "F.06 f: too few character classes required"
    assert "enforce_for_root" in conf, "F.06 f: policy not enforced for root"


@pytest.mark.check("check:F.06.f.no_empty_or_default_passwords")
def test_no_empty_or_default_passwords(host, evidence):
    rows = [line.split(":") for line in host.check_output("getent shadow").splitlines()]
    empty = sorted(r[0] for r in rows if r[1] == "")
    usable = sorted(r[0] for r in rows if r[1] and r[1][0] not in "!*")
    evidence.add("accounts with a usable password", usable)
    evidence.add("accounts with an empty password", empty)
    keys = host.run("ls -l /etc/ssh/ssh_host_*_key.pub && ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
    evidence.add("host keys", keys.stdout)
    assert not empty, f"F.06 f: accounts with an empty password: {empty}"


# ------------------------------------------------------------------------------------------ F.06 g/h
def _listeners(host) -> list[tuple[str, str, int]]:
    out = host.check_output("ss -H -lntu")
    res = []
    for line in out.splitlines():
        parts = line.split()
        proto, local = parts[0], parts[4]
        addr, _, port = local.rpartition(":")
        res.append((proto, addr.strip("[]"), int(port)))
    return res


@pytest.mark.check("check:F.06.g.no_unexpected_listeners")
def test_no_unexpected_listeners(host, evidence):
    allowed = allowed_inbound(host)
    listening = _listeners(host)
    exposed = [
        (p, a, port)
        for p, a, port in listening
        if not (a.startswith("127.") or a in ("::1", "localhost") or a.startswith("%lo"))
    ]
    evidence.add("listening sockets", listening)
    evidence.add("allowed by the flow model", sorted(allowed))
    bad = sorted({f"{p}/{port} on {a}" for p, a, port in exposed if (p, port) not in allowed})
    assert not bad, f"F.06 g: network services the flow model does not allow: {bad}"


@pytest.mark.check("check:F.06.h.unneeded_units_masked")
def test_unneeded_units_masked(host, evidence):
    units = policy(host, "os_hardening_services_masked")
    states = {u: host.run(f"systemctl is-enabled {u}").stdout.strip() for u in units}
    evidence.add("unit states", states)
    bad = sorted(u for u, s in states.items() if s != "masked")
    assert not bad, f"F.06 h: unneeded units not masked: {bad}"


# ------------------------------------------------------------------------------------------ F.06 i
@pytest.mark.check("check:F.06.i.usb_storage_disabled")
def test_usb_storage_disabled(host, evidence):
    conf = host.run("cat /etc/modprobe.d/*.conf 2>/dev/null").stdout
    blocked = {
        m: bool(re.search(rf"^install\s+{m}\s+/bin/(false|true)", conf, re.M)) for m in ("usb_storage", "uas")
    }
    evidence.add("modprobe install /bin/false", blocked)
    automounters = host.run("dpkg-query -W -f='${Package} ${db:Status-Status}\\n' udisks2 autofs").stdout
    evidence.add("automounters", automounters)
    loaded = host.run("grep -E '^(usb_storage|uas) ' /proc/modules").stdout.strip()
    if in_container(host):
        evidence.add(
            "verification level",
            "configuration: a lab container shares the build machine's kernel, "
            f"whose loaded modules say nothing about this host (host kernel shows: {loaded or 'none'})",
        )
    else:
        evidence.add("loaded", loaded or "none")
        assert not loaded, f"F.06 i: USB storage driver loaded: {loaded}"
    assert all(blocked.values()), f"F.06 i: USB storage modules not blocked: {blocked}"
    assert " installed" not in automounters, "F.06 i: an automounter is installed"


# ------------------------------------------------------------------------------------------ F.06 j
def _nft_input(host) -> tuple[str | None, list[dict]]:
    out = host.run("nft -j list chain inet ckms_host input")
    if out.rc != 0:
        return None, []
    data = json.loads(out.stdout)["nftables"]
    policy_ = next((x["chain"].get("policy") for x in data if "chain" in x), None)
    return policy_, [x["rule"] for x in data if "rule" in x]


def _rule_ports(rule: dict) -> tuple[str | None, list[int], list[str], bool]:
    proto, ports, saddrs, accept = None, [], [], False
    for e in rule["expr"]:
        m = e.get("match")
        if m:
            left, right = m["left"], m["right"]
            pl = left.get("payload") if isinstance(left, dict) else None
            if pl and pl.get("field") == "dport":
                proto = pl.get("protocol")
                vals = right.get("set", [right]) if isinstance(right, dict) else [right]
                ports += [int(v) for v in vals if isinstance(v, int)]
            if pl and pl.get("field") == "saddr":
                vals = right.get("set", [right]) if isinstance(right, dict) and "set" in right else [right]
                saddrs += [
                    f"{v['prefix']['addr']}/{v['prefix']['len']}"
                    if isinstance(v, dict) and "prefix" in v
                    else str(v)
                    for v in vals
                ]
        if "accept" in e:
            accept = True
    return proto, ports, saddrs, accept


@pytest.mark.check("check:F.06.j.ports_closed")
def test_ports_closed(host, evidence):
    pol, rules = _nft_input(host)
    evidence.add("input policy", pol)
    assert pol == "drop", "F.06 j: no host firewall with a default-drop input policy (table inet ckms_host)"
    allowed = allowed_inbound(host)
    opened, bad = [], []
    for r in rules:
        proto, ports, saddrs, accept = _rule_ports(r)
        if not accept:
            continue
        exprs = json.dumps(r["expr"])
        if not ports:
            if '"ct"' in exprs or '"lo"' in exprs:  # established/related, loopback
                continue
            bad.append(f"accept rule without a port: {exprs[:200]}")
            continue
        for p in ports:
            opened.append({"proto": proto, "port": p, "from": saddrs, "comment": r.get("comment")})
            if (proto, p) not in allowed:
                bad.append(f"{proto}/{p} ({r.get('comment')})")
            if not saddrs:
                bad.append(f"{proto}/{p} open to any source")
    evidence.add("open (from the ruleset)", opened)
    evidence.add("allowed by the flow model", sorted(allowed))
    other = host.run("nft list tables").stdout.split("\n")
    evidence.add("tables", [t for t in other if t])
    missing = sorted(a for a in allowed if not any((o["proto"], o["port"]) == a for o in opened))
    evidence.add("modelled flows without a rule", missing)
    assert not bad, f"F.06 j: ports open that the flow model does not allow: {bad}"
    # Other tables (e.g. ckms_ca's) cannot widen this: a drop in any base chain of a hook is final.


# ------------------------------------------------------------------------------------------ F.06 k
@pytest.mark.check("check:F.06.k.apparmor_profile_valid")
def test_apparmor_profile_valid(host, evidence):
    name = policy(host, "os_hardening_apparmor_ca_profile")
    path = f"/etc/apparmor.d/{name}"
    f = host.file(path)
    assert f.exists, f"F.06 k: no AppArmor profile {path} for the CA daemon"
    text = f.content_string
    parse = host.run(f"/sbin/apparmor_parser --skip-kernel-load --skip-cache --quiet {path}")
    evidence.add("apparmor_parser --skip-kernel-load", f"rc={parse.rc} {parse.stderr.strip()}")
    complain = (
        re.search(r"flags=\([^)]*complain", text)
        or host.file(f"/etc/apparmor.d/force-complain/{name}").exists
    )
    evidence.add("mode", "complain" if complain else "enforce")
    evidence.add("apparmor.service", host.run("systemctl is-enabled apparmor.service").stdout.strip())
    assert parse.rc == 0, f"F.06 k: the CA profile does not parse: {parse.stderr.strip()}"
    assert not complain, "F.06 k: the CA profile is in complain mode"


@pytest.mark.check("check:F.06.k.apparmor_enforcing")
def test_apparmor_enforcing(host, evidence):
    name = policy(host, "os_hardening_apparmor_ca_profile")
    profiles = host.file("/sys/kernel/security/apparmor/profiles")
    enabled = host.run("cat /sys/module/apparmor/parameters/enabled").stdout.strip()
    evidence.add("kernel apparmor enabled", enabled or "module absent")
    if not profiles.exists:
        assert in_container(host), "F.06 k: AppArmor is not available in this host's kernel"
        # what can be verified here: the profile is installed, compiles, is not in complain mode, the unit
        # confines the daemon with it and AppArmor is enabled to load it at boot
        path = f"/etc/apparmor.d/{name}"
        text = host.file(path).content_string if host.file(path).exists else ""
        parse = host.run(f"/sbin/apparmor_parser --skip-kernel-load --skip-cache --quiet {path}")
        ca_unit = host.run("systemctl show -p LoadState --value ckms-ca.service").stdout.strip() == "loaded"
        unit = (
            host.run("systemctl show -p AppArmorProfile ckms-ca.service").stdout.strip()
            if ca_unit
            else "no ckms-ca.service on this host (role scenario without the CA)"
        )
        enabled = host.run("systemctl is-enabled apparmor.service").stdout.strip()
        complain = (
            bool(re.search(r"flags=\([^)]*complain", text))
            or host.file(f"/etc/apparmor.d/force-complain/{name}").exists
        )
        evidence.add("profile", {"path": path, "compiles": parse.rc == 0, "complain mode": complain})
        evidence.add("ckms-ca.service", unit)
        evidence.add("apparmor.service at boot", enabled)
        evidence.limit(
            "no AppArmor in the kernel this lab container shares (no securityfs): that the "
            "profile is loaded and enforcing cannot be observed; installed, compiling, enforce-mode "
            "profile referenced by the unit verified instead"
        )
        assert text, f"F.06 k: no AppArmor profile {path}"
        assert parse.rc == 0, f"F.06 k: the CA profile does not compile: {parse.stderr.strip()}"
        assert not complain, "F.06 k: the CA profile is in complain mode"
        assert not ca_unit or unit.endswith(name), (
            f"F.06 k: ckms-ca.service is not confined by {name} ({unit})"
        )
        assert enabled == "enabled", "F.06 k: apparmor.service is not enabled at boot"
        return
    loaded = profiles.content_string
    evidence.add("loaded profiles", loaded[:2000])
    assert f"{name} (enforce)" in loaded, f"F.06 k: profile {name} not loaded in enforce mode"


# ------------------------------------------------------------------------------------------ F.06 l
@pytest.mark.check("check:F.06.l.sshd_hardened")
def test_sshd_hardened(host, evidence):
    c = sshd_t(host)
    keys = (
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "permitemptypasswords",
        "pubkeyauthentication",
        "authenticationmethods",
        "x11forwarding",
        "allowtcpforwarding",
        "allowagentforwarding",
        "permittunnel",
        "maxauthtries",
        "kexalgorithms",
        "ciphers",
        "macs",
        "loglevel",
        "allowgroups",
        "permituserenvironment",
    )
    evidence.add("sshd -T", {k: c.get(k) for k in keys})
    problems = []
    for k, want in (
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitemptypasswords", "no"),
        ("pubkeyauthentication", "yes"),
        ("authenticationmethods", "publickey"),
        ("x11forwarding", "no"),
        ("allowtcpforwarding", "no"),
        ("allowagentforwarding", "no"),
        ("permittunnel", "no"),
        ("permituserenvironment", "no"),
    ):
        if c.get(k) != want:
            problems.append(f"{k} is {c.get(k)}, want {want}")
    if int(c.get("maxauthtries", 99)) > 4:
        problems.append(f"maxauthtries {c.get('maxauthtries')}")
    for k, strong in (("kexalgorithms", STRONG_KEX), ("ciphers", STRONG_CIPHERS), ("macs", STRONG_MACS)):
        weak = sorted(set(c.get(k, "").split(",")) - strong)
        if weak:
            problems.append(f"weak {k}: {weak}")
    assert not problems, f"F.06 l: sshd not hardened: {problems}"


def _controller_address(host) -> str:
    return str(policy(host, "ckms_controller_address") or "").split("/")[0]


def _ssh_backend(host):
    """testinfra's SSH backend behind an ansible:// host (None when the host is not reached over SSH)."""
    backend = host.backend
    if getattr(backend, "NAME", "") == "ansible":
        inner = backend.ansible_runner.get_host(
            backend.host, ssh_config=backend.ssh_config, ssh_identity_file=backend.ssh_identity_file
        )
        backend = inner.backend if inner is not None else None
    return backend if backend is not None and hasattr(backend, "_build_ssh_command") else None


def _ssh_as(host, user: str, command: str = "true") -> subprocess.CompletedProcess | None:
    """A real SSH login to the host as ``user`` from here (the controller), with the inventory's key and
    pinned host key, no sudo; None when the host is not reached over SSH."""
    backend = _ssh_backend(host)
    if backend is None:
        return None
    other = copy.copy(backend)
    other.host = copy.copy(backend.host)
    other.host.user = user
    other.sudo, other.controlpersist, other.controlpath = False, 0, None
    cmd, args = other._build_ssh_command(command)
    line = other.quote(" ".join(["-o BatchMode=yes", "-o ControlPath=none", *cmd[1:]]), *args)
    return subprocess.run(f"ssh {line}", shell=True, capture_output=True, text=True, timeout=60)


@pytest.mark.check("check:F.06.l.root_login_closed_everywhere")
def test_root_login_closed_everywhere(host, evidence):
    # root may not log in from any address, the controller's included: Ansible uses the automation account
    controller = _controller_address(host)
    contexts = {"any address": None, "192.0.2.10": "user=root,host=admin.example,addr=192.0.2.10"}
    if controller:
        contexts[f"the controller {controller}"] = f"user=root,host=controller,addr={controller}"
    seen = {what: sshd_t(host, ctx).get("permitrootlogin") for what, ctx in contexts.items()}
    cfg = host.run("cat /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf 2>/dev/null").stdout
    overrides = [
        ln.strip() for ln in cfg.splitlines() if re.match(r"\s*PermitRootLogin\s+(?!no\b)", ln, re.I)
    ]
    root_keys = host.run("cat /root/.ssh/authorized_keys 2>/dev/null | grep -c . || true").stdout.strip()
    attempt = _ssh_as(host, "root")
    evidence.add("PermitRootLogin (sshd -T) per source", seen)
    evidence.add("PermitRootLogin lines other than no", overrides or "none")
    evidence.add("keys in /root/.ssh/authorized_keys", root_keys or "0")
    if attempt is None:
        evidence.limit("host not reached over SSH: no real root login attempt from the controller")
    else:
        evidence.add(
            "ssh root@host from the controller (inventory key)",
            {"rc": attempt.returncode, "stderr": attempt.stderr.strip()[-300:]},
        )
    open_to = {what: mode for what, mode in seen.items() if mode != "no"}
    assert not open_to, f"F.06 l: root login allowed (PermitRootLogin) from {open_to}"
    assert not overrides, f"F.06 l: sshd configuration re-allows root login: {overrides}"
    assert attempt is None or attempt.returncode != 0, "F.06 l: root logged in over SSH from the controller"


@pytest.mark.check("check:F.06.l.kernel_sysctls")
def test_kernel_sysctls(host, evidence):
    net = policy(host, "os_hardening_sysctl_net")
    kern = policy(host, "os_hardening_sysctl_kernel")
    path = policy(host, "os_hardening_sysctl_file")
    conf = (
        dict(re.findall(r"^\s*([\w.]+)\s*=\s*(\S+)", host.file(path).content_string, re.M))
        if host.file(path).exists
        else {}
    )
    runtime = {k: host.run(f"sysctl -n {k}").stdout.strip() for k in {**net, **kern}}
    container = in_container(host)
    evidence.add("runtime", runtime)
    evidence.add("in container", container)
    problems = [
        f"{k}: {path} has {conf.get(k)}, want {v}"
        for k, v in {**net, **kern}.items()
        if conf.get(k) != str(v)
    ]
    problems += [f"{k}={runtime[k]} at run time, want {v}" for k, v in net.items() if runtime[k] != str(v)]
    if container:
        evidence.add(
            "verification level (kernel-wide)",
            "configuration: kernel-wide sysctls belong to the build "
            "machine's kernel inside a lab container; the file is verified, run-time values are evidence",
        )
    else:
        problems += [
            f"{k}={runtime[k]} at run time, want {v}"
            for k, v in kern.items()
            if runtime[k] and runtime[k] != str(v)
        ]
    assert not problems, f"F.06 l: {problems}"


# The bootloader concern (roles/os_hardening/tasks/bootloader.yml): where GRUB is managed by update-grub, the kernel
# command line carries the public baseline's hardening arguments and a GRUB superuser guards editing the entries.
BOOTLOADER_RECORD = "/var/lib/ckms-hardening/bootloader.json"


def _bootloader_wanted(host) -> list[str]:
    """The arguments the role puts on the command line, in its order: the site's (without those named like a
    hardening argument), then the hardening ones; each once."""
    hard = list(policy(host, "os_hardening_bootloader_cmdline") or [])
    extra = list(policy(host, "os_hardening_bootloader_cmdline_extra") or [])
    keys = _names(hard)
    wanted: list[str] = []
    for arg in [*extra, *hard]:
        if (arg in hard or arg.split("=", 1)[0] not in keys) and arg not in wanted:
            wanted.append(arg)
    return wanted


def _bootloader_record(host) -> dict:
    f = host.file(BOOTLOADER_RECORD)
    return json.loads(f.content_string) if f.exists else {}


def _default_grub_value(text: str, name: str) -> str | None:
    """The value of the last ``name=`` assignment of /etc/default/grub (the one the shell keeps), unquoted."""
    values = re.findall(rf"^\s*{name}=(.*)$", text, re.M)
    if not values:
        return None
    value = values[-1].strip()
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'" else value


def _names(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args}


def _bootloader_not_applicable_in_container(host, evidence, what: str) -> None:
    """A lab container: no bootloader, the build machine's kernel. The record must say the concern did not apply."""
    record = _bootloader_record(host)
    evidence.add("bootloader record", record or "missing")
    evidence.add(
        "verification level (bootloader)",
        f"configuration: a lab container has no bootloader and runs the build machine's kernel; {what} cannot "
        "be observed here, and the role's record states the concern as not applicable",
    )
    evidence.limit(f"{what}: not observable in a lab container (no bootloader of its own)")
    assert record, f"no {BOOTLOADER_RECORD}: the bootloader concern of os_hardening did not run"
    assert record.get("applicable") is False and record.get("reason"), (
        f"the bootloader record of a container does not say why the concern does not apply: {record}"
    )


@pytest.mark.check("check:F.06.l.kernel_cmdline_hardened")
def test_kernel_cmdline_hardened(host, evidence):
    """The running kernel's command line (/proc/cmdline) has every hardening argument of the public baseline and
    none of the forbidden ones (nosmap, nosmep), and /etc/default/grub, which the baseline's OVAL reads, has them."""
    wanted = _bootloader_wanted(host)
    absent = set(policy(host, "os_hardening_bootloader_cmdline_absent") or [])
    evidence.add("wanted arguments", wanted)
    evidence.add("arguments that must be absent", sorted(absent))
    if in_container(host):
        _bootloader_not_applicable_in_container(host, evidence, "the kernel command line")
        return
    running = host.file("/proc/cmdline").content_string.split()
    evidence.add("/proc/cmdline", " ".join(running))
    record = _bootloader_record(host)
    evidence.add("bootloader record", record or "missing")
    default = host.file("/etc/default/grub")
    text = default.content_string if default.exists else ""
    linux = (_default_grub_value(text, "GRUB_CMDLINE_LINUX") or "").split()
    linux_default = (_default_grub_value(text, "GRUB_CMDLINE_LINUX_DEFAULT") or "").split()
    evidence.add(
        "/etc/default/grub GRUB_CMDLINE_LINUX", " ".join(linux) if default.exists else "no /etc/default/grub"
    )
    evidence.add("/etc/default/grub GRUB_CMDLINE_LINUX_DEFAULT", " ".join(linux_default))
    problems = [f"the running kernel lacks {a}" for a in wanted if a not in running]
    problems += [f"the running kernel has {a}" for a in sorted(_names(running) & absent)]
    if not default.exists:
        problems.append(
            "no /etc/default/grub (the bootloader concern did not apply: " + str(record.get("reason")) + ")"
        )
    else:
        problems += [f"GRUB_CMDLINE_LINUX lacks {a}" for a in wanted if a not in linux]
        problems += [f"/etc/default/grub has {a}" for a in sorted(_names(linux + linux_default) & absent)]
    if record.get("reboot", "").startswith("pending") and any("running kernel" in p for p in problems):
        problems.append(
            "a reboot is pending (/var/run/reboot-required): the new command line takes effect at the next boot"
        )
    assert not problems, f"F.06 l: {problems}"


@pytest.mark.check("check:F.06.l.security_updates_configured")
def test_security_updates_configured(host, evidence):
    """Unattended security updates that would actually run: the settings, the package, an apt source for the
    security suite, and the two timers that start apt-daily and unattended-upgrades enabled and not masked
    (settings alone, with the timers masked, install nothing); a timer's last run that failed fails too."""
    dump = host.check_output("apt-config dump")
    periodic = dict(re.findall(r'^APT::Periodic::([\w-]+) "(\S*)";', dump, re.M))
    origins = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";', dump, re.M)

    def show(unit: str, *props: str) -> dict[str, str]:
        out = host.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    timers = {}
    for t in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        last = show(t.replace(".timer", ".service"), "Result", "ExecMainStartTimestamp")
        timers[t] = {
            **show(t, "UnitFileState", "ActiveState"),
            "last run": last.get("ExecMainStartTimestamp") or "never",
            "result": last.get("Result"),
        }
    sources = host.run(
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null"
    ).stdout
    security_sources = [
        ln.strip()
        for ln in sources.splitlines()
        if not ln.strip().startswith("#") and re.search(r"-security\b|debian-security", ln)
    ]
    installed = host.package("unattended-upgrades").is_installed
    evidence.add("APT::Periodic", periodic)
    evidence.add("origins", origins)
    evidence.add("timers", timers)
    evidence.add("apt sources of the security suite", security_sources)
    evidence.add("unattended-upgrades installed", installed)
    # The inventory may turn automatic updates off (an offline site without a reachable mirror, like the lab):
    # then the timers must be off as declared, and the patches come from the reviewed procedure that
    # check:F.44.patch_status_current measures. Said as a limitation, never as "configured".
    declared = policy(host, "os_hardening_updates_timers_enabled")
    if not isinstance(declared, bool):  # the role's default: on everywhere but the lab
        declared = inventory_vars(host).get("ckms_environment") != "lab"
    evidence.add("os_hardening_updates_timers_enabled (inventory)", declared)
    if not declared:
        states = {t: st.get("UnitFileState") for t, st in timers.items()}
        assert all(v in ("masked", "disabled") for v in states.values()), (
            f"F.06 l: automatic updates are declared off but the timers are {states}"
        )
        evidence.limit(
            "automatic security updates are off by this inventory (os_hardening_updates_timers_enabled: false,"
            " no reachable mirror): patches are applied by the reviewed procedure and measured by"
            " check:F.44.patch_status_current, not by this host on its own"
        )
        return
    problems = []
    if periodic.get("Unattended-Upgrade") != "1":
        problems.append("APT::Periodic::Unattended-Upgrade is not 1")
    if periodic.get("Update-Package-Lists") != "1":
        problems.append("APT::Periodic::Update-Package-Lists is not 1 (upgrades would see no new packages)")
    if not origins or not all("security" in o.lower() for o in origins):
        problems.append(f"origins not security-only: {origins}")
    if not installed:
        problems.append("unattended-upgrades is not installed")
    if not security_sources:
        problems.append("no apt source for the security suite: the security origins can never match")
    for t, st in timers.items():
        if st.get("UnitFileState") != "enabled":
            problems.append(f"{t} is {st.get('UnitFileState') or 'missing'}: the configuration never runs")
        elif st.get("ActiveState") != "active":
            problems.append(f"{t} is enabled but {st.get('ActiveState')}")
        if st["last run"] != "never" and st.get("result") not in ("success", None, ""):
            problems.append(f"last {t.replace('.timer', '.service')} run failed ({st.get('result')})")
    assert not problems, f"F.06 l: unattended security updates would not run: {problems}"


# ------------------------------------------------------------------------------------------- F.07
@pytest.mark.check("check:F.07.boot_integrity_recorded")
def test_boot_integrity_recorded(host, evidence):
    f = host.file("/var/lib/ckms-hardening/boot-integrity.json")
    assert f.exists, "F.07: no record of how boot integrity is provided on this host"
    rec = json.loads(f.content_string)
    evidence.add("record", rec)
    assert rec.get("secure_boot") in ("enabled", "not-visible", "disabled", "no-secureboot-variable")
    assert rec.get("provided_by")


@pytest.mark.check("check:F.07.secure_boot_enabled")
def test_secure_boot_enabled(host, evidence):
    var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    if not host.file("/sys/firmware/efi").exists:
        evidence.add("efi", "no /sys/firmware/efi")
        assert in_container(host), "F.07: no EFI firmware on this host: secure boot cannot be enabled"
        rec = host.file("/var/lib/ckms-hardening/boot-integrity.json")
        record = json.loads(rec.content_string) if rec.exists else {}
        evidence.add("boot-integrity record", record)
        evidence.limit(
            "a lab container sees no firmware: the secure boot state is not visible; the host's "
            "boot-integrity record says so and names what provides boot integrity instead"
        )
        assert record.get("secure_boot") == "not-visible", (
            f"F.07: the boot-integrity record does not state that secure boot is not visible: {record}"
        )
        assert record.get("provided_by"), (
            "F.07: the boot-integrity record names nothing providing boot integrity"
        )
        return
    raw = host.run(f"od -An -t u1 {var}").stdout.split()
    mok = host.run("mokutil --sb-state 2>&1").stdout.strip()
    evidence.add("SecureBoot efivar", raw)
    evidence.add("mokutil --sb-state", mok or "mokutil not installed")
    assert raw and raw[-1] == "1", "F.07: secure boot is not enabled"


_GRUB_ITEM = re.compile(r"^(menuentry|submenu)\s+'((?:[^'\\]|\\.)*)'(.*)\{\s*$")


def _default_entry(cfg: str, grubenv: str) -> tuple[str, str]:
    """(``set default`` as GRUB will use it, the top-level entry line it names, or why there is none)."""
    defaults = re.findall(r'^\s*set default="([^"]*)"', cfg, re.M)
    fixed = [d for d in defaults if not d.startswith("${")]
    if fixed:
        default = fixed[-1]
    elif "${saved_entry}" in defaults:
        saved = re.search(r"^saved_entry=(.*)$", grubenv, re.M)
        default = saved.group(1).strip() if saved and saved.group(1).strip() else "0"
    else:
        default = "0"
    items = [line for line in cfg.splitlines() if _GRUB_ITEM.match(line)]  # top level: not indented
    if default.isdigit():
        index = int(default)
        return default, items[index] if index < len(items) else f"no entry {index} at the top level"
    for line in items:
        m = _GRUB_ITEM.match(line)
        ids = re.findall(r"\$menuentry_id_option\s+'([^']*)'", line)
        if m and (m.group(2) == default or default in ids):
            return default, line
    return (
        default,
        f"no top-level entry named {default!r} (an entry inside a submenu: the restricted submenu asks for the password)",
    )


@pytest.mark.check("check:F.07.bootloader_password")
def test_bootloader_password(host, evidence):
    """Where GRUB is managed by update-grub: grub.cfg names a superuser with a PBKDF2 password (the public
    baseline's grub2_password) and is 0600 root:root; the default entry boots without the password (the CA server
    comes back by itself after a power cut, F.52) and no recovery entry does."""
    if in_container(host):
        _bootloader_not_applicable_in_container(host, evidence, "the bootloader")
        return
    record = _bootloader_record(host)
    evidence.add("bootloader record", record or "missing")
    cfg_file = host.file("/boot/grub/grub.cfg")
    assert cfg_file.exists, f"F.07: no /boot/grub/grub.cfg ({record.get('reason') or 'no bootloader record'})"
    cfg = cfg_file.content_string
    evidence.add("grub.cfg mode, owner", f"{cfg_file.mode:04o} {cfg_file.user}:{cfg_file.group}")
    superusers = re.findall(r'^\s*set\s+superusers=("?)([a-zA-Z_]+)\1\s*$', cfg, re.M)
    passwords = re.findall(r"^\s*password_pbkdf2\s+(\S+)\s+grub\.pbkdf2\.sha512\.\S+\s*$", cfg, re.M)
    evidence.add("superusers", [u for _, u in superusers])
    evidence.add("users with a password_pbkdf2", passwords)  # names only, never the hashes
    grubenv = host.file("/boot/grub/grubenv")
    default, entry = _default_entry(cfg, grubenv.content_string if grubenv.exists else "")
    evidence.add("default entry", {"set default": default, "entry": entry})
    recovery = [ln.strip() for ln in cfg.splitlines() if re.match(r"\s*menuentry\s.*recovery mode", ln)]
    evidence.add("recovery entries", recovery or "none")
    problems = []
    if not superusers:
        problems.append("grub.cfg sets no superuser (set superusers=, letters and _ only)")
    elif not set(passwords) & {u for _, u in superusers}:
        problems.append("no superuser has a password_pbkdf2 line")
    if cfg_file.mode & 0o177 or (cfg_file.user, cfg_file.group) != ("root", "root"):
        problems.append(
            f"grub.cfg is {cfg_file.mode:04o} {cfg_file.user}:{cfg_file.group}, want 0600 root:root"
        )
    if not entry.startswith("menuentry ") or " --unrestricted " not in entry:
        problems.append(f"the default entry ({default}) does not boot without the password: {entry[:200]}")
    problems += [f"an unrestricted recovery entry: {r[:120]}" for r in recovery if " --unrestricted " in r]
    assert not problems, f"F.07: {problems}"


# ------------------------------------------------------------------------------------- A.27 / A.30
def _group_members(host) -> dict[str, set[str]]:
    rows = [line.split(":") for line in host.check_output("getent group").splitlines()]
    primary: dict[str, set[str]] = {}
    gid_name = {r[2]: r[0] for r in rows}
    for p in host.check_output("getent passwd").splitlines():
        f = p.split(":")
        primary.setdefault(gid_name.get(f[3], f[3]), set()).add(f[0])
    return {r[0]: set(filter(None, r[3].split(","))) | primary.get(r[0], set()) for r in rows}


@pytest.mark.check("check:A.27.linux_groups_per_role")
def test_linux_groups_per_role(host, evidence):
    groups = policy(host, "os_hardening_role_groups")
    members = _group_members(host)
    evidence.add(
        "role groups",
        {role: sorted(members.get(g, [])) if g in members else "missing" for role, g in groups.items()},
    )
    missing = sorted(g for g in groups.values() if g not in members)
    assert not missing, f"A.27: Linux groups for CKMS roles missing: {missing}"


@pytest.mark.check("check:A.30.role_groups_disjoint")
def test_role_groups_disjoint(host, evidence):
    groups = policy(host, "os_hardening_role_groups")
    assert len(set(groups.values())) == len(groups), "A.30: two CKMS roles share one Linux group"
    members = _group_members(host)
    shared = {}
    names = sorted(groups.values())
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = members.get(a, set()) & members.get(b, set())
            if both:
                shared[f"{a}+{b}"] = sorted(both)
    evidence.add("members in two role groups", shared or "none")
    assert not shared, f"A.30: accounts in two role groups: {shared}"


@pytest.mark.check("check:A.30.no_account_in_two_role_groups")
def test_no_account_in_two_role_groups(host, evidence):
    groups = set(policy(host, "os_hardening_role_groups").values())
    members = _group_members(host)
    per_user: dict[str, list[str]] = {}
    for g in groups:
        for u in members.get(g, ()):
            per_user.setdefault(u, []).append(g)
    evidence.add("role groups per account", per_user)
    two = {u: gs for u, gs in per_user.items() if len(gs) > 1}
    assert not two, f"A.30: accounts holding two CKMS roles: {two}"


# The ckms subcommands each role group may run as the CA user (os_hardening_sudo_rules), and one of
# another role's that it must not: sudo -l -U <account> answers for the account without running anything.
_OWN_AND_FOREIGN = {
    "administrator": ("entity list", "change approve 1"),
    "authority": ("change approve 1", "entity list"),
    "auditor": ("audit verify", "audit seal"),
    "operator": (None, "entity list"),
}


def _sudo_commands(host, user: str, runas: str) -> list[str]:
    """The commands ``sudo -l -U user`` lists for ``runas`` (tags and the runas prefix stripped)."""
    out = host.run(f"sudo -n -l -U {user}").stdout
    listed = []
    for line in out.split("may run the following commands", 1)[-1].splitlines():
        m = re.match(r"\s*\(([^)]*)\)\s*((?:[A-Z_]+:\s*)*)(.*)$", line)
        if m and runas in [r.strip() for r in m.group(1).split(":")[0].split(",")]:
            listed += [c.strip() for c in m.group(3).split(",") if c.strip()]
    return listed


def _sudo_allows(allowed: list[str], command: str) -> bool:
    return any(fnmatch.fnmatchcase(command, pattern) for pattern in allowed)


@pytest.mark.check("check:A.30.sudo_runs_only_own_role_commands")
def test_sudo_runs_only_own_role_commands(host, evidence):
    accounts = policy(host, "os_hardening_accounts") or []
    ca_user = _resolved(policy(host, "ckms_ca_user"), inventory_vars(host).get("ckms_user") or "ckms")
    ckms = "/opt/ckms/venv/bin/ckms"
    seen, wrong = {}, []
    for acct in accounts:
        own, foreign = _OWN_AND_FOREIGN.get(acct["role"], (None, "entity list"))
        if not host.user(acct["name"]).exists:
            wrong.append(f"{acct['name']}: account missing")
            continue
        if host.file(ckms).exists:  # sudo itself decides (the command must exist for `sudo -l CMD`)
            base = f"sudo -n -l -U {acct['name']} -u {ca_user} {ckms}"
            ok = host.run(f"{base} {own}").rc == 0 if own else None
            other = host.run(f"{base} {foreign}").rc == 0
        else:  # a host without the CA (a role's own scenario): match sudo's listing as sudo would
            allowed = _sudo_commands(host, acct["name"], ca_user)
            ok = _sudo_allows(allowed, f"{ckms} {own}") if own else None
            other = _sudo_allows(allowed, f"{ckms} {foreign}")
        seen[acct["name"]] = {"role": acct["role"], f"own ({own})": ok, f"foreign ({foreign})": other}
        if own and not ok:
            wrong.append(f"{acct['name']} may not run its own `ckms {own}`")
        if other:
            wrong.append(f"{acct['name']} ({acct['role']}) may run `ckms {foreign}`")
    evidence.add("sudo -l per person account (as the CA user)", seen)
    assert accounts, "A.30: no person accounts defined"
    assert not wrong, f"A.30: sudo rules do not separate the roles: {wrong}"


# ------------------------------------------------------------------------------------------- A.67
@pytest.mark.check("check:A.67.ssh_only_from_registered_admin_addresses")
def test_ssh_only_from_registered_admin_addresses(host, evidence):
    pol, rules = _nft_input(host)
    assert pol == "drop", "A.67: no default-drop host firewall"
    flows = policy(host, "ckms_flows")
    registered = {
        c
        for f in (flows or [])
        if f.get("port") == 22 and "ca" in f.get("dst", [])
        for c in f.get("src_cidrs", [])
    }
    mgmt = (
        set(policy(host, "os_hardening_firewall_mgmt_sources") or [])
        if not str(policy(host, "os_hardening_firewall_mgmt_sources")).startswith("{{")
        else set()
    )
    if policy(host, "ckms_controller_address"):
        mgmt.add(policy(host, "ckms_controller_address").split("/")[0] + "/32")
    ssh_sources = []
    for r in rules:
        proto, ports, saddrs, accept = _rule_ports(r)
        if accept and proto == "tcp" and 22 in ports:
            ssh_sources += saddrs or ["any"]
    evidence.add("sources allowed to SSH", ssh_sources)
    evidence.add(
        "registered (flow model) + management", sorted(registered | mgmt) or "flow model not in inventory"
    )
    assert "any" not in ssh_sources, "A.67: SSH open to any source"
    if registered:
        norm = {s if "/" in s else s + "/32" for s in ssh_sources}
        extra = sorted(norm - registered - mgmt)
        assert not extra, f"A.67: SSH allowed from unregistered addresses: {extra}"
