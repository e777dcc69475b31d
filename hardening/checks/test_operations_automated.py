"""Procedural duties made checkable (F.44, F.49, F.53, F.54): what a maintenance checklist ticks by hand.

* F.49: the backup service's last run succeeded within the timer's interval (+ slack), the newest backup
  on the host is that recent, and a recent backup exists off the host (the controller's backup_fetch_dir)
  byte for byte.
* F.54: the newest off-host copy really restores: it decrypts with the custodians' recipient key on the
  controller (the GCM tag authenticates it), its manifest verifies, its database passes integrity_check
  and it is the running CA. A tampered scratch copy must be refused, so the verification itself is proven.
* F.44: the people with OS accounts and role groups on the CA host (and the terminal) and the CA's
  entities with their role grants are exactly the roster of the inventory (ckms_ca_people).
* F.44: patch status: the host's installed packages against its own apt indexes and against the offline
  mirror (in the lab the controller's apt indexes stand in for it); security updates pending longer than
  the grace period fail. Nothing is installed: apt only simulates.
* F.44: the daily digest (audit role) runs, reaches the alert channel, and its counts are the journal's and
  the CA trail's for the same window.
* F.53: the drill reminder (audit role) is armed, alerts on an overdue scratch record and not on a current
  one, and the host's real drill records are within the limit.

Everything that is modified (a decrypted copy, a tampered copy, a copy of the dpkg status; the drill
records the reminder is tried on, in /tmp on the host) is a scratch copy, removed afterwards; the live CA,
its token and its database are only read. The digest and the reminder do send their messages to the alert
channel (syslog tag audit_alert_tag): that is what is checked. The patch check keeps a register of when
each pending security fix was first seen on the controller (build/patch-status/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import testinfra
from ckms_checks import CA_HOME, REPO, inventory_vars, policy, probe, systemd_props
from testinfra.utils.ansible_runner import AnsibleRunner

testinfra_hosts = ["ansible://ca"]

BACKUP_UNIT = "ckms-backup"
# Beyond the timer's own randomised delay: start-up catch-up (Persistent=true) and the run itself.
BACKUP_SLACK_S = 3600
# operations.md, patch management: critical security fixes applied within two weeks of release.
PATCH_GRACE_DAYS = float(os.environ.get("CKMS_PATCH_GRACE_DAYS", "14"))
MIRROR_LISTS = Path(os.environ.get("CKMS_APT_MIRROR_LISTS", "/var/lib/apt/lists"))
PATCH_REGISTER = Path(os.environ.get("CKMS_PATCH_REGISTER", str(REPO / "build" / "patch-status")))
NOLOGIN = {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync"}


def _inventory_name(host) -> str:
    return getattr(host.backend, "host", None) or host.check_output("hostname")


def _render(value: str, host) -> str:
    """The two templates the backup role's paths use (inventory_hostname, the controller's $HOME)."""
    value = re.sub(r"\{\{\s*inventory_hostname\s*\}\}", _inventory_name(host), value)
    value = re.sub(r"\{\{\s*lookup\('ansible\.builtin\.env',\s*'HOME'\)\s*\}\}", str(Path.home()), value)
    assert "{{" not in value, f"cannot resolve {value!r} on the controller"
    return value


def _host_now(host) -> int:
    return int(host.check_output("date +%s"))


def _span_s(host, span: str) -> int:
    """A systemd time span ("15min", "1h 30min") in seconds, as systemd reads it."""
    out = host.run(f"systemd-analyze timespan '{span}'").stdout
    m = re.search(r"μs:\s*(\d+)", out)
    return int(m.group(1)) // 1_000_000 if m else 0


def _timer_interval_s(host, unit: str) -> tuple[int, dict]:
    """Seconds between two elapses of the timer's OnCalendar (as systemd computes them), and what was read."""
    props = systemd_props(host, f"{unit}.timer", "TimersCalendar", "RandomizedDelayUSec", "Persistent")
    m = re.search(r"OnCalendar=(.*?)\s*;", props.get("TimersCalendar", ""))
    assert m, f"F.49: {unit}.timer has no OnCalendar schedule ({props})"
    out = host.run(f"systemd-analyze calendar --iterations=2 '{m.group(1)}'").stdout
    # each elapse in UTC: the "(in UTC)" line, or the elapse line itself on a host whose zone is UTC
    utc = re.findall(r"\(in UTC\):\s*(\w{3} [\d-]+ [\d:]+) UTC", out) or re.findall(
        r"(?:Next elapse|Iter\. #\d+):\s*(\w{3} [\d-]+ [\d:]+) UTC", out
    )
    stamps = [datetime.strptime(s, "%a %Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp() for s in utc]
    assert len(stamps) >= 2, f"F.49: cannot compute the interval of {m.group(1)!r}: {out[-300:]}"
    return int(stamps[1] - stamps[0]), {"on_calendar": m.group(1), **props}


def _backup_window_s(host, evidence) -> int:
    interval, timer = _timer_interval_s(host, BACKUP_UNIT)
    window = interval + _span_s(host, timer.get("RandomizedDelayUSec") or "0") + BACKUP_SLACK_S
    evidence.add("backup timer", {**timer, "interval_s": interval, "allowed_age_s": window})
    return window


def _last_run(host) -> dict:
    """Result and exit time of the backup service's last run: the unit's state, else its journal."""
    out = host.run(
        f"systemctl show {BACKUP_UNIT}.service --timestamp=unix "
        "-p Result -p ExecMainStatus -p ExecMainExitTimestamp -p ExecMainStartTimestamp"
    ).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    exited = props.get("ExecMainExitTimestamp", "").lstrip("@")
    if exited.isdigit():
        return {
            "from": "unit state",
            "result": props.get("Result"),
            "status": props.get("ExecMainStatus"),
            "at": int(exited),
        }
    # No run since the unit was loaded (a restarted host): the journal keeps the last outcome.
    # systemd's catalog: 7ad2d189… the unit succeeded (deactivated successfully), d9b373ed… it failed.
    outcomes = {"7ad2d189f7e94e70a38c781354912448": "success", "d9b373ed55a64feb8242e02dbe79a49c": "failed"}
    lines = host.run(f"journalctl -u {BACKUP_UNIT}.service -o json --no-pager -n 300").stdout.splitlines()
    recs = [
        r
        for r in (json.loads(line) for line in lines if line.startswith("{"))
        if r.get("MESSAGE_ID") in outcomes
    ]
    if not recs:
        return {"from": "journal", "result": None, "status": None, "at": None}
    return {
        "from": "journal",
        "result": outcomes[recs[-1]["MESSAGE_ID"]],
        "status": "0" if outcomes[recs[-1]["MESSAGE_ID"]] == "success" else recs[-1].get("MESSAGE", ""),
        "at": int(recs[-1]["__REALTIME_TIMESTAMP"]) // 1_000_000,
    }


def _host_backups(host) -> list[tuple[int, str]]:
    """(mtime, path) of the backups on the host, newest first."""
    backup_dir = policy(host, "backup_dir")
    out = host.run(f"sh -c 'stat -c \"%Y %n\" {backup_dir}/ckms-*.cms 2>/dev/null'").stdout
    rows = [(int(t), p) for t, p in (line.split(" ", 1) for line in out.splitlines() if " " in line)]
    return sorted(rows, reverse=True)


def _stamp_of(name: str) -> int | None:
    m = re.search(r"-(\d{8}T\d{6}Z)\.cms$", name)
    return int(datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()) if m else None


def _offhost_copies(host) -> tuple[Path, list[Path]]:
    """The controller's copies of this host's backups, newest (by the time in the name) first."""
    fetch_dir = Path(_render(str(policy(host, "backup_fetch_dir")), host))
    copies = [p for p in fetch_dir.glob("ckms-*.cms") if _stamp_of(p.name)]
    return fetch_dir, sorted(copies, key=lambda p: _stamp_of(p.name) or 0, reverse=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ F.49
@pytest.mark.check("check:F.49.recent_successful_backup")
def test_recent_successful_backup(host, evidence):
    now = _host_now(host)
    window = _backup_window_s(host, evidence)
    run = _last_run(host)
    evidence.add("last backup run", {**run, "age_s": now - run["at"] if run["at"] else None})
    assert run["at"] is not None, "F.49: the backup service has no recorded run (unit state or journal)"
    assert run["result"] == "success" and str(run["status"]) == "0", (
        f"F.49: the last backup run did not succeed: {run}"
    )
    assert now - run["at"] <= window, (
        f"F.49: the last successful backup run is {(now - run['at']) / 3600:.1f} h old "
        f"(schedule allows {window / 3600:.1f} h)"
    )

    backups = _host_backups(host)
    evidence.add("backups on the host (newest first)", [f"{p} age {now - t}s" for t, p in backups[:5]])
    assert backups, "F.49: no backup artifact on the host"
    newest_t, newest = backups[0]
    assert now - newest_t <= window, (
        f"F.49: the newest backup on the host ({newest}) is {(now - newest_t) / 3600:.1f} h old "
        f"(schedule allows {window / 3600:.1f} h)"
    )

    fetch_dir, copies = _offhost_copies(host)
    evidence.add(
        "off-host copies (controller)", {"dir": str(fetch_dir), "newest": [p.name for p in copies[:5]]}
    )
    assert copies, f"F.49: no off-host copy of this host's backups in {fetch_dir}"
    copy = copies[0]
    on_host = {Path(p).name: p for _, p in backups}
    digest = _sha256(copy)
    host_digest = (
        host.run(f"sha256sum {on_host[copy.name]}").stdout.split()[0] if copy.name in on_host else None
    )
    copy_age = now - (_stamp_of(copy.name) or 0)
    evidence.add(
        "newest off-host copy",
        {
            "file": copy.name,
            "age_s": copy_age,
            "sha256 (controller)": digest,
            "sha256 (host)": host_digest or "not on the host (rotated out)",
            "newest host backup also off-host": Path(newest).name in {p.name for p in copies},
        },
    )
    assert host_digest == digest, (
        f"F.49: the newest off-host copy {copy.name} is not identical to a backup on the host "
        f"(controller {digest[:16]}, host {host_digest and host_digest[:16]})"
    )
    assert copy_age <= window, (
        f"F.49: the newest off-host copy is {copy_age / 3600:.1f} h old (schedule allows "
        f"{window / 3600:.1f} h): backups are not being copied off the host"
    )


# ------------------------------------------------------------------------------------------------ F.54
def _decrypt(copy: Path, key: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(copy),
            "-inkey",
            str(key),
            "-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _manifest_problems(root: Path) -> tuple[int, list[str]]:
    """Files whose SHA-256 differs from MANIFEST.sha256, files missing, files not listed."""
    listed: dict[str, str] = {}
    for line in (root / "MANIFEST.sha256").read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[os.path.normpath(name)] = digest
    problems = []
    present = {
        os.path.normpath(os.path.relpath(p, root))
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != "MANIFEST.sha256"
    }
    for name, digest in listed.items():
        if name not in present:
            problems.append(f"missing {name}")
        elif _sha256(root / name) != digest:
            problems.append(f"differs {name}")
    problems += [f"not in the manifest: {n}" for n in sorted(present - set(listed))]
    return len(listed), problems


@pytest.mark.check("check:F.54.offhost_copy_restorable")
def test_offhost_copy_restorable(host, evidence):
    fetch_dir, copies = _offhost_copies(host)
    assert copies, f"F.54: no off-host copy of this host's backups in {fetch_dir}"
    copy = copies[0]
    key = Path(str(policy(host, "backup_recipient_key_src") or ""))
    evidence.add("off-host copy", {"file": str(copy), "bytes": copy.stat().st_size})
    assert key.is_file(), (
        f"F.54: the recipient key ({key or 'backup_recipient_key_src unset'}) is not on the controller"
    )
    live_fp = (
        host.check_output(f"openssl x509 -in {CA_HOME}/ca/ca.pem -noout -fingerprint -sha256")
        .split("=")[1]
        .strip()
    )
    work = Path(tempfile.mkdtemp(prefix="h7-restore-"))
    try:
        work.chmod(0o700)
        t0 = time.monotonic()
        dec = _decrypt(copy, key, work / "backup.tar")
        assert dec.returncode == 0, f"F.54: the off-host copy does not decrypt: {dec.stderr.strip()[-300:]}"
        with tarfile.open(work / "backup.tar") as tar:
            tar.extractall(work / "x", filter="data")
        root = work / "x" / "ckms"
        files, problems = _manifest_problems(root)
        info = json.loads((root / "BACKUP-INFO.json").read_text())
        db_file = root / str(policy(host, "backup_database") or "db/ckms.sqlite3")
        db: dict = {"present": db_file.is_file()}
        if db_file.is_file():
            with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as conn:
                db["integrity_check"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
                db["certificates"] = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
                db["audit_events"] = conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
            conn.close()
        tokens = [str(p.relative_to(root)) for p in root.rglob("token.object")]
        elapsed = round(time.monotonic() - t0, 2)
        # the verification must be able to refuse: one flipped byte in a scratch copy
        bad = work / "tampered.cms"
        raw = bytearray(copy.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        bad.write_bytes(bytes(raw))
        tampered = _decrypt(bad, key, work / "tampered.tar")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    evidence.add("decrypted and verified in", f"{elapsed} s")
    evidence.add("manifest", {"files": files, "problems": problems[:20]})
    evidence.add("backup info", info)
    evidence.add("live CA sha256", live_fp)
    evidence.add("database in the copy", db)
    evidence.add("token objects in the copy", tokens or "none")
    evidence.add("tampered copy", {"rc": tampered.returncode, "stderr": tampered.stderr.strip()[-200:]})
    assert files and not problems, f"F.54: the copy's content does not match its manifest: {problems[:10]}"
    assert info.get("ca_sha256") == live_fp, (
        f"F.54: the copy holds another CA ({info.get('ca_sha256')}) than the running one ({live_fp})"
    )
    assert db.get("integrity_check") == "ok", f"F.54: the database in the copy is not usable: {db}"
    assert not tokens, f"F.54: the copy holds a token store (E.11): {tokens}"
    assert tampered.returncode != 0, "F.54: a modified copy still decrypted: the copy is not authenticated"


# ------------------------------------------------------------------------------------------------ F.44
def _accounts(h) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Accounts with a login shell (name -> shell) and the members of every group (primary included)."""
    rows = [line.split(":") for line in h.check_output("getent passwd").splitlines()]
    groups = [line.split(":") for line in h.check_output("getent group").splitlines()]
    gid_name = {g[2]: g[0] for g in groups}
    members = {g[0]: set(filter(None, g[3].split(","))) for g in groups}
    for r in rows:
        members.setdefault(gid_name.get(r[3], r[3]), set()).add(r[0])
    return {r[0]: r[6] for r in rows if r[6] not in NOLOGIN}, members


def _os_roster_problems(
    where: str,
    logins: dict[str, str],
    members: dict[str, set[str]],
    expected: dict[str, str],
    role_groups: dict[str, str],
    allowed: set[str],
) -> tuple[dict, list[str]]:
    """Compare one host's person accounts and role groups with ``expected`` (person -> role)."""
    people = {u for u in logins if u not in allowed}
    seen = {u: sorted(r for r, g in role_groups.items() if u in members.get(g, ())) for u in people}
    in_groups = {u for g in role_groups.values() for u in members.get(g, ())}
    problems = [
        f"{where}: {u} has a login shell but is not on the roster" for u in sorted(people - set(expected))
    ]
    problems += [
        f"{where}: {u} (roster: {r}) has no account with a login shell"
        for u, r in sorted(expected.items())
        if u not in people
    ]
    for u, r in sorted(expected.items()):
        if u in people and seen[u] != [r]:
            problems.append(f"{where}: {u} holds role groups {seen[u]}, roster says {r}")
    problems += [
        f"{where}: {u} is in a role group but not on the roster" for u in sorted(in_groups - set(expected))
    ]
    return {"person accounts": {u: seen.get(u, []) for u in sorted(people | in_groups)}}, problems


def _terminal(request):
    inv = request.config.getoption("ansible_inventory")
    hosts = AnsibleRunner(inv).get_hosts("terminal") if inv else []
    return testinfra.get_host(f"ansible://{hosts[0]}", ansible_inventory=inv) if hosts else None


@pytest.mark.check("check:F.44.accounts_match_roster")
def test_accounts_match_roster(host, request, evidence):
    roster = {p["id"]: p for p in policy(host, "ckms_ca_people") or []}
    assert roster, "F.44: no roster (ckms_ca_people) in the inventory"
    role_groups = dict(policy(host, "os_hardening_role_groups") or {})
    configured = {a["name"]: a["role"] for a in policy(host, "os_hardening_accounts") or []}
    allowed = set(policy(host, "os_hardening_accounts_login_allowed") or [])
    automation = (
        policy(host, "os_hardening_automation_user")
        if policy(host, "os_hardening_automation_enabled")
        else None
    )
    allowed |= {automation} if automation else set()
    evidence.add(
        "roster", {i: f"{p['role']} ({p.get('enrol_on', 'controller')})" for i, p in sorted(roster.items())}
    )
    # who works where: controller persons log in to the CA host, terminal persons to the terminal
    on_ca = {i: p["role"] for i, p in roster.items() if p.get("enrol_on", "controller") != "terminal"}
    on_terminal = {i: p["role"] for i, p in roster.items() if p.get("enrol_on") == "terminal"}
    problems = [
        f"configuration: os_hardening_accounts has {n} as {r}, roster says {on_ca.get(n, roster.get(n, {}).get('role', 'nothing'))}"
        for n, r in sorted(configured.items())
        if on_ca.get(n) != r
    ]

    logins, members = _accounts(host)
    seen, found = _os_roster_problems("CA host", logins, members, on_ca, role_groups, allowed)
    evidence.add("CA host", seen)
    problems += found

    term = _terminal(request)
    if term is not None and on_terminal:
        t_groups = dict(policy(term, "ckms_ca_role_groups") or role_groups)
        t_allowed = {"root"} | ({automation} if automation else set())
        t_logins, t_members = _accounts(term)
        seen, found = _os_roster_problems("terminal", t_logins, t_members, on_terminal, t_groups, t_allowed)
        evidence.add("terminal", seen)
        problems += found
    elif on_terminal:
        evidence.limit("no terminal host in the inventory: the terminal persons' accounts were not compared")

    ents = probe(host, "entities", script="ckms_probe_ops.py")["entities"]
    evidence.add("CA entities", ents)
    live = {i: e for i, e in ents.items() if e["status"] != "disabled"}
    problems += [
        f"CA: entity {i} ({e['status']}, {e['grants']}) is not on the roster"
        for i, e in sorted(live.items())
        if i not in roster
    ]
    for i, p in sorted(roster.items()):
        e = ents.get(i)
        if e is None or e["status"] == "disabled":
            problems.append(
                f"CA: {i} (roster: {p['role']}) has no {'entity' if e is None else 'enabled entity'}"
            )
        elif e["grants"] != [p["role"]]:
            problems.append(f"CA: entity {i} holds {e['grants']}, roster says {p['role']}")
    # withdrawn persons stay as disabled entities (they cannot act; their grants are kept as history)
    evidence.add(
        "disabled entities (withdrawn, not compared)",
        {i: e["grants"] for i, e in sorted(ents.items()) if e["status"] == "disabled" and i not in roster}
        or "none",
    )
    evidence.add("differences", problems or "none")
    assert not problems, f"F.44: accounts and entities differ from the roster: {problems}"


def _pending(lines: str) -> list[dict]:
    """`apt-get -s` Inst lines: package, installed, candidate, origin."""
    out = []
    for m in re.finditer(r"^Inst (\S+) \[([^\]]+)\] \((\S+) ([^)]*?)(?: \[[^\]]*\])?\)", lines, re.M):
        out.append(
            {"package": m.group(1), "installed": m.group(2), "candidate": m.group(3), "from": m.group(4)}
        )
    return out


def _security(p: dict) -> bool:
    return "security" in p["from"].lower()


def _release_date(path: Path) -> float | None:
    """The Date: of an InRelease/Release file: since when the archive has published this index at least."""
    try:
        m = re.search(r"^Date: (.+)$", path.read_text(errors="replace"), re.M)
    except OSError:
        return None
    return (
        datetime.strptime(m.group(1).strip(), "%a, %d %b %Y %H:%M:%S %Z").replace(tzinfo=UTC).timestamp()
        if m
        else None
    )


def _first_seen(host_name: str, pending: list[dict], now: float) -> dict[str, float]:
    """The patch register on the controller: when each pending security fix was first seen pending."""
    path = PATCH_REGISTER / f"{os.environ.get('CKMS_LAB_STACK') or 'inventory'}-{host_name}.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    keep = {
        f"{p['package']}={p['candidate']}": old.get(f"{p['package']}={p['candidate']}", now) for p in pending
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=1, sort_keys=True))
    return keep


@pytest.mark.check("check:F.44.patch_status_current")
def test_patch_status_current(host, evidence):
    now = time.time()
    grace = PATCH_GRACE_DAYS * 86400
    lab = inventory_vars(host).get("ckms_environment") == "lab"
    sources = host.run(
        "sh -c \"grep -hE '^[[:space:]]*(deb|URIs:|Suites:)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null\""
    ).stdout.strip()
    codename = host.run(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip()
    lists = host.run(
        "sh -c \"find /var/lib/apt/lists -maxdepth 1 -name '*Release' -printf '%T@ %f\\n' 2>/dev/null\""
    ).stdout.split("\n")
    lists = [line.split(" ", 1) for line in lists if " " in line]
    updated = max((float(t) for t, _ in lists), default=None)
    timers = {
        t: host.run(f"systemctl is-enabled {t} 2>&1").stdout.strip()
        for t in ("apt-daily.timer", "apt-daily-upgrade.timer")
    }
    ulog = host.run(
        "sh -c 'tail -n 3 /var/log/unattended-upgrades/unattended-upgrades.log 2>/dev/null'"
    ).stdout
    evidence.add("configured sources", sources or "none")
    evidence.add(
        "host's package indexes",
        {"files": len(lists), "last update age_h": round((now - updated) / 3600, 1) if updated else None},
    )
    evidence.add("apt timers", timers)
    evidence.add("unattended-upgrades log (tail)", ulog.strip() or "none")

    problems: list[str] = []
    views: dict[str, dict] = {}
    # 1. The host's own view (its configured sources, as last fetched): simulation only.
    if lists:
        sim = host.run("apt-get -s -o Debug::NoLocking=1 dist-upgrade").stdout
        pending = _pending(sim)
        views["host indexes"] = {"since": updated, "pending": pending}
        if now - updated > grace:
            problems.append(
                f"the host last fetched its package indexes {(now - updated) / 86400:.0f} days ago"
            )
    elif lab:
        evidence.limit(
            "the lab host has no reachable package mirror (apt timers off, no package indexes): its own "
            "view of pending updates cannot be read; the controller's indexes stand in for the mirror"
        )
    else:
        problems.append("the host has no package indexes: it has never fetched from its mirror")

    # 2. The offline mirror's view: the host's installed set against the controller's indexes.
    releases = sorted(MIRROR_LISTS.glob(f"*_dists_{codename}*_InRelease")) if codename else []
    if releases and shutil.which("apt-get"):
        with tempfile.TemporaryDirectory(prefix="h7-dpkg-") as tmp:
            status = Path(tmp) / "status"
            status.write_text(host.check_output("cat /var/lib/dpkg/status"))
            sim = subprocess.run(
                [
                    "apt-get",
                    "-s",
                    "-o",
                    f"Dir::State::status={status}",
                    "-o",
                    f"Dir::State::Lists={MIRROR_LISTS}",
                    "-o",
                    "Debug::NoLocking=1",
                    "dist-upgrade",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert sim.returncode == 0, f"F.44: apt simulation against the mirror failed: {sim.stderr[-300:]}"
        security_release = [r for r in releases if "security" in r.name]
        since = _release_date(security_release[0]) if security_release else None
        views["offline mirror (controller indexes)"] = {"since": since, "pending": _pending(sim.stdout)}
        evidence.add("mirror indexes", {r.name: _release_date(r) for r in releases})
    elif not lists:
        msg = f"no mirror view: the controller has no apt indexes for {codename or 'this release'} in {MIRROR_LISTS}"
        if lab:
            evidence.limit(msg)
        else:
            problems.append(msg)

    security = {
        f"{p['package']}={p['candidate']}": (p, v["since"])
        for v in views.values()
        for p in v["pending"]
        if _security(p)
    }
    first = _first_seen(_inventory_name(host), [p for p, _ in security.values()], now)
    overdue = []
    for k, (p, since) in sorted(security.items()):
        # pending at least since the index that lists it was published, or since the register first saw it
        age = now - min(first[k], since or now)
        if age > grace:
            overdue.append(f"{k} ({p['installed']} installed, pending {age / 86400:.0f} days)")
    for name, v in views.items():
        evidence.add(
            f"pending from {name}",
            {
                "all": len(v["pending"]),
                "security": [
                    f"{p['package']} {p['installed']} -> {p['candidate']}"
                    for p in v["pending"]
                    if _security(p)
                ],
            },
        )
    evidence.add("security updates pending beyond the grace", overdue or "none")
    evidence.add("grace period (days)", PATCH_GRACE_DAYS)
    problems += [f"security update pending beyond {PATCH_GRACE_DAYS:g} days: {o}" for o in overdue]
    if not views and lab:
        pytest.skip("F.44: no package index on the lab host or the controller: patch status not observable")
    assert views, "F.44: patch status could not be observed at all (no host indexes, no mirror view)"
    assert not problems, f"F.44: patch status not current: {problems}"


# ------------------------------------------------------------------- F.44 digest, F.53 drill reminder
def _journal(host, tag: str, since: str, grep: str) -> list[dict]:
    """Journal records of ``tag`` since ``since`` (host time) whose message starts with ``grep``."""
    out = host.run(f"journalctl -q --no-pager -o json -t {tag} --since '{since}'").stdout
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r for r in recs if str(r.get("MESSAGE", "")).startswith(grep)]


def _timer(host, unit: str, evidence, item: str, max_interval_s: int) -> None:
    state = systemd_props(
        host, unit, "ActiveState", "UnitFileState", "TimersCalendar", "NextElapseUSecRealtime"
    )
    evidence.add(unit, state)
    assert state.get("ActiveState") == "active" and state.get("UnitFileState") == "enabled", (
        f"{item}: {unit} is not enabled and active"
    )
    interval, _ = _timer_interval_s(host, unit.removesuffix(".timer"))
    assert interval <= max_interval_s, f"{item}: {unit} fires only every {interval / 86400:.1f} days"


@pytest.mark.check("check:F.44.daily_digest_sent")
def test_daily_digest_sent(host, evidence):
    tag = policy(host, "audit_alert_tag")
    hours = int(policy(host, "audit_digest_hours") or 24)
    _timer(host, "ckms-audit-digest.timer", evidence, "F.44", 86400)
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    run = host.run("systemctl start ckms-audit-digest.service")
    result = systemd_props(host, "ckms-audit-digest.service", "Result", "ExecMainStatus")
    evidence.add("digest run", {"rc": run.rc, **result, "stderr": run.stderr.strip()[-300:]})
    assert run.rc == 0 and result.get("Result") == "success", f"F.44: the digest service failed: {result}"
    sent = _journal(host, tag, since, "F.44 daily digest")
    evidence.add("digest on the alert channel", [r["MESSAGE"] for r in sent] or "none")
    assert sent, f"F.44: no digest reached the alert channel (syslog tag {tag})"
    msg, prio = sent[-1]["MESSAGE"], int(sent[-1].get("PRIORITY", 6))
    at = int(sent[-1]["__REALTIME_TIMESTAMP"]) // 1_000_000
    window = datetime.fromtimestamp(at - hours * 3600, UTC).strftime("%Y-%m-%d %H:%M:%S")

    # what the digest says against what the check reads itself for the same window
    problems = []
    host_window = host.check_output(f"date -d @{at - hours * 3600} '+%Y-%m-%d %H:%M:%S'")
    for t in policy(host, "audit_digest_alert_tags") or []:
        own = host.run(
            f"sh -c \"journalctl -q --no-pager --since '{host_window}' --until @{at} -p warning -t {t} -o cat "
            f"| grep -vc '^F\\.44 daily digest'\""
        ).stdout.strip()
        said = re.search(rf"(?<![\w-]){re.escape(t)}=(\d+)", msg)
        if said is None or abs(int(said.group(1)) - int(own or 0)) > 1:
            problems.append(f"alerts {t}: digest {said and said.group(1)}, journal {own}")
    trail = probe(host, "trail-count", window.replace(" ", "T"), script="ckms_probe_ops.py")
    m = re.search(r"CA trail (\d+) events \((\d+) denied, (\d+) error\)", msg)
    evidence.add("CA trail in the same window (read by the check)", trail)
    if m is None:
        problems.append("the digest has no CA trail summary")
    else:
        by = trail["by_outcome"]
        # a few records may land between the digest and this read
        if not (0 <= trail["total"] - int(m.group(1)) <= 5) or int(m.group(2)) > by.get("denied", 0):
            problems.append(f"CA trail: digest {m.groups()}, database {trail['total']} {by}")
    busy = bool(re.search(r"=[1-9]", msg)) or (m is not None and (m.group(2), m.group(3)) != ("0", "0"))
    evidence.add("priority", prio)
    if busy and prio > 4:
        problems.append(f"the digest reports events but went out at priority {prio}, not warning")
    assert not problems, f"F.44: the digest does not match the events: {problems}"


@pytest.mark.check("check:F.53.drill_reminder_armed")
def test_drill_reminder_armed(host, evidence):
    tag = policy(host, "audit_alert_tag")
    lib = policy(host, "audit_lib_dir")
    max_days = int(policy(host, "audit_drill_max_age_days") or 365)
    _timer(host, "ckms-drill-reminder.timer", evidence, "F.53", 31 * 86400)
    # the reminder must alert on an overdue record and stay quiet on a current one (scratch records)
    scratch = host.check_output("mktemp -d /tmp/ckms-check-drill.XXXXXX")
    try:
        since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
        host.run(f"touch -d '{max_days + 35} days ago' {scratch}/old && touch {scratch}/new")
        old = host.run(f"{lib}/drill-reminder {scratch}/old")
        new = host.run(f"{lib}/drill-reminder {scratch}/new")
        said = {r["MESSAGE"]: int(r.get("PRIORITY", 6)) for r in _journal(host, tag, since, "F.53 drill")}
    finally:
        host.run(f"rm -rf {scratch}")
    evidence.add("scratch runs", {"overdue record rc": old.rc, "current record rc": new.rc, "said": said})
    overdue = [p for m, p in said.items() if f"{scratch}/old" in m and "overdue" in m]
    current = [p for m, p in said.items() if f"{scratch}/new" in m and "current" in m]
    assert overdue and overdue[0] <= 4, "F.53: a drill record older than the limit raised no alert"
    assert current and not any("overdue" in m and f"{scratch}/new" in m for m in said), (
        "F.53: a current drill record was not reported as current"
    )
    # the real records: the timer's own service, and its verdict on the alert channel
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    # the records the deployed reminder looks at (its default arguments, as rendered on the host)
    line = host.run(f"grep -m1 '^\\[ \\$# -gt 0 \\] || set -- ' {lib}/drill-reminder").stdout
    records = line.split("set -- ", 1)[1].split() if "set -- " in line else []
    ages = host.run(
        "sh -c '"
        + "".join(f'stat -c "%y %n" {r} 2>/dev/null || echo "absent {r}"; ' for r in records)
        + "true'"
    ).stdout.strip()
    run = host.run("systemctl start ckms-drill-reminder.service")
    verdict = [r["MESSAGE"] for r in _journal(host, tag, since, "F.53 drill")]
    evidence.add("drill records", ages or "none")
    evidence.add("reminder verdict", verdict or "none")
    assert run.rc == 0 and verdict, f"F.53: the reminder service ran without a verdict (rc={run.rc})"
    assert "overdue" not in verdict[-1], f"F.53: {verdict[-1]}"
