"""Checks for the HSM event log on the CA server (guidance F.08, A.31).

Every person's PKCS#11 tool run on the CA host goes through the audit role's shim
(/usr/local/bin/pkcs11-tool -> pkcs11-spy -> the token's module); its PIN-free trace reaches the
journal under ``ckms-hsm`` and the collector keeps it, with the journal's trusted uid, pid and
command, in the HSM event log. The checks act as a non-root OS user (a lab person account when
there is one) against a scratch SoftHSM token with a throwaway PIN, so the CA's own PIN never leaves
its file and the live token is not touched; they run the collector, read the log, and try what must
not work (a PIN in the trace, a record forged in someone else's name). The daemon's own sessions
and each request are on the application trail (``hsm.session.*``, ``certificate.*``).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time

import pytest
from ckms_checks import CA_HOME, CA_USER, CA_VENV, in_container, policy, probe

testinfra_hosts = ["ansible://ca"]

LOG = "/var/log/ckms-hsm/events.jsonl"
COLLECTOR = "ckms-hsm-collect.service"
SHIM = "/usr/local/bin/pkcs11-tool"
PERSONS = ("admin-1", "authority-1", "auditor-1")


def _log_path(host) -> str:
    return policy(host, "audit_hsm_events_log", "audit") or LOG


def _person(host) -> str:
    """A lab person's OS account (os_hardening_accounts; not root, not the CA service user), else nobody."""
    accounts = [a["name"] for a in policy(host, "os_hardening_accounts", "os_hardening") or []]
    for name in [*accounts, *PERSONS]:
        if name not in ("root", CA_USER) and host.run(f"getent passwd {shlex.quote(name)}").rc == 0:
            return name
    return "nobody"


def _now(host) -> str:
    return host.run("date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00").stdout.strip()


class Scratch:
    """A scratch SoftHSM token owned by the person, with a throwaway PIN, removed afterwards."""

    def __init__(self, host, user: str) -> None:
        self.host, self.user = host, user
        self.pin = "".join(secrets.choice("0123456789") for _ in range(12))
        self.label = f"hsmcheck-{secrets.token_hex(3)}"
        self.dir = host.run("mktemp -d /tmp/ckms-hsmcheck.XXXXXX").stdout.strip()
        self.conf = f"{self.dir}/softhsm2.conf"
        host.run(
            f"mkdir {self.dir}/tokens && printf 'directories.tokendir = {self.dir}/tokens\\n"
            f"objectstore.backend = file\\nlog.level = ERROR\\n' > {self.conf} && chown -R {user} {self.dir}"
        )
        so_pin = secrets.token_hex(8)
        init = self.run(
            f"/usr/bin/softhsm2-util --init-token --free --label {self.label} --pin {self.pin} --so-pin {so_pin}"
        )
        assert init.rc == 0, f"scratch token not created: {init.stderr}"

    def run(self, command: str, env: dict[str, str] | None = None):
        """``command`` as the person, with a login PATH (/usr/local/bin first) and the scratch token."""
        extra = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        return self.host.run(
            f"cd / && runuser -u {self.user} -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp "
            f"SOFTHSM2_CONF={self.conf} {extra} sh -c {shlex.quote(command)}"
        )

    def login_and_list(self, pin_on_argv: bool = False):
        pin = self.pin if pin_on_argv else "env:P"
        return self.run(
            f"pkcs11-tool --token-label {self.label} --login --pin {pin} --list-objects", {"P": self.pin}
        )

    def remove(self) -> None:
        self.host.run(f"rm -rf {self.dir}")


@pytest.fixture
def scratch(host):
    s = Scratch(host, _person(host))
    yield s
    s.remove()


def _collect(host, log: str, predicate, timeout: float = 15.0) -> list[dict]:
    """Run the collector until the log holds records matching ``predicate`` (the journal is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        host.run(f"systemctl start {COLLECTOR}")
        records = [json.loads(ln) for ln in host.run(f"cat {log}").stdout.splitlines() if ln.strip()]
        found = [r for r in records if predicate(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _session_records(host, log: str, marker: str, since: str) -> list[dict]:
    """All records of the latest tool run whose start record carries ``marker`` (its token label)."""
    starts = _collect(
        host, log, lambda r: r["time"] >= since and r["event"].startswith("start ") and marker in r["event"]
    )
    if not starts:
        return []
    tag = "session=" + starts[-1]["event"].split("session=", 1)[1].split()[0]
    _collect(host, log, lambda r: r["event"].startswith("end ") and tag in r["event"].split())
    return _collect(host, log, lambda r: tag in r["event"].split(), 0)


@pytest.mark.check("check:F.08.hsm_event_log_records_manual_access")
def test_hsm_event_log_records_manual_access(host, evidence, scratch):
    log = _log_path(host)
    resolved = scratch.run("command -v pkcs11-tool").stdout.strip()
    evidence.add("OS user of the check", scratch.user)
    evidence.add("pkcs11-tool in the person's PATH", resolved)
    assert resolved == SHIM, "F.08: pkcs11-tool does not resolve to the logging shim"
    since = _now(host)
    run = scratch.login_and_list()
    assert run.rc == 0, f"the tool run failed through the shim: {run.stderr}"
    records = _session_records(host, log, scratch.label, since)
    evidence.add(
        "its records in the HSM event log",
        [{k: r[k] for k in ("time", "uid", "user", "event")} for r in records],
    )
    uid = int(host.run(f"id -u {scratch.user}").stdout)
    assert records, "F.08: the tool run left no record in the HSM event log"
    assert all(r["uid"] == uid and r["user"] == scratch.user for r in records), (
        "F.08: records not in the user's name"
    )
    events = " ".join(r["event"] for r in records)
    assert "C_Login" in events and "C_FindObjects" in events, "F.08: the PKCS#11 calls are not recorded"
    assert all(since <= r["time"] <= _now(host) for r in records), (
        "F.08: record time outside the check's window"
    )
    # Breakage: the real tool, bypassing the shim. The shim cannot see it; auditd's execve rule can.
    bypass_since = _now(host)
    scratch.run(
        f"/usr/bin/pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label {scratch.label} --list-objects"
    )
    seen = _collect(host, log, lambda r: r["time"] >= bypass_since and r["uid"] == uid, 3)
    evidence.add("records of a run of /usr/bin/pkcs11-tool bypassing the shim", seen)
    evidence.limit(
        "a run of /usr/bin/pkcs11-tool (or any PKCS#11 program) that bypasses the shim is not in the HSM event "
        "log; auditd's execve rule (key ckms-privileged, logged-in persons with auid >= 1000) records it on a "
        "real server" + (", but kernel audit cannot run in this lab container" if in_container(host) else "")
    )


@pytest.mark.check("check:F.08.hsm_event_log_has_no_pins")
def test_hsm_event_log_has_no_pins(host, evidence, scratch):
    log = _log_path(host)
    since = _now(host)
    assert scratch.login_and_list(pin_on_argv=True).rc == 0  # the PIN on argv as well as through env:
    assert scratch.login_and_list().rc == 0
    records = _session_records(host, log, scratch.label, since)
    assert records, "F.08: no records to inspect"
    pin_hex = " ".join(f"{b:02X}" for b in scratch.pin.encode())
    journal = host.run(
        f"journalctl --no-pager -o cat --since '{since[:19].replace('T', ' ')} UTC' -t ckms-hsm"
    ).stdout
    text = host.run(f"cat {log}").stdout
    logins = [r["event"] for r in records if "C_Login" in r["event"]]
    evidence.add("C_Login records", logins)
    assert logins and all("redacted" in e for e in logins)
    for where, content in (("HSM event log", text), ("journal", journal)):
        assert scratch.pin not in content and pin_hex not in content, f"F.08: a PIN reached the {where}"
    # The CA's own PIN (read here, never printed) is nowhere in the log either.
    ca_pin = host.run(f"cat {CA_HOME}/secrets/token-pin").stdout.strip()
    assert not ca_pin or ca_pin not in text, "F.08: the CA token's PIN is in the HSM event log"
    # Breakage: the spy's raw trace, without the shim's condenser, does carry the PIN; the check sees it.
    raw = scratch.run(
        f"PKCS11SPY=/usr/lib/softhsm/libsofthsm2.so PKCS11SPY_OUTPUT={scratch.dir}/raw.log /usr/bin/pkcs11-tool "
        f"--module {policy(host, 'audit_hsm_events_spy', 'audit')} --token-label {scratch.label} --login "
        f"--pin env:P --list-objects >/dev/null; cat {scratch.dir}/raw.log",
        {"P": scratch.pin},
    ).stdout
    evidence.add("the raw spy trace holds the PIN bytes (why the shim condenses it)", pin_hex in raw)
    assert pin_hex in raw, "the breakage case did not reproduce: the raw spy trace should show the PIN"


@pytest.mark.check("check:A.31.hsm_log_names_os_user")
def test_hsm_log_names_os_user(host, evidence, scratch):
    log = _log_path(host)
    uid = int(host.run(f"id -u {scratch.user}").stdout)
    forged = f"forged-{secrets.token_hex(4)}"
    # Breakage: the person writes a record under the shim's identifier claiming to be root.
    scratch.run(
        f"echo 'start session={forged} tool=pkcs11-tool pid=1 uid=0 user=root' | systemd-cat -t ckms-hsm"
    )
    found = _collect(host, log, lambda r: forged in r["event"])
    evidence.add("a record the person forged in root's name", found)
    assert found, "A.31: the forged record never reached the log (collector not running?)"
    assert all(r["uid"] == uid and r["user"] == scratch.user for r in found), (
        "A.31: the HSM event log names the user a record claims, not the one the journal saw"
    )
    records = [json.loads(ln) for ln in host.run(f"cat {log}").stdout.splitlines() if ln.strip()]
    unnamed = [r for r in records if r.get("uid") is None or not r.get("user")]
    evidence.add("records", len(records))
    evidence.add("records without an OS user", unnamed[:5])
    assert not unnamed, "A.31: HSM event log records without an OS user"
    mode = host.file(log)
    evidence.add("log owner/group/mode", f"{mode.user}:{mode.group} {oct(mode.mode)}")
    assert mode.user == "root" and mode.mode == 0o640, "A.31: the HSM event log is not root-owned 0640"


@pytest.mark.check("check:A.31.app_log_attributes_each_request")
def test_app_log_attributes_each_request(host, evidence):
    if not host.file(f"{CA_VENV}/bin/python").exists:
        pytest.skip("A.31: the CA daemon is not deployed on this host (audit role's own scenario)")
    recs = probe(
        host,
        "trail",
        "--action",
        "certificate.issue",
        "--action",
        "certificate.reissue",
        "--action",
        "certificate.revoke",
        "--limit",
        "500",
    )["records"]
    sessions = probe(
        host, "trail", "--action", "hsm.session.open", "--action", "hsm.session.close", "--limit", "50"
    )["records"]
    evidence.add("request records inspected", len(recs))
    evidence.add(
        "latest",
        [{k: r[k] for k in ("seq", "at", "entity_id", "role", "action", "outcome")} for r in recs[-5:]],
    )
    assert recs, "A.31: no issuance records on the trail to inspect"
    anonymous = [
        r["seq"] for r in recs if not r["entity_id"] or not r["role"] or r["entity_id"] in ("unknown", "-")
    ]
    assert not anonymous, f"A.31: requests not attributed to an entity: {anonymous[:10]}"
    evidence.add(
        "daemon token sessions (OS user)", [json.loads(r["detail"]).get("os_user") for r in sessions]
    )
    assert sessions, "A.31: the daemon's token sessions are not on the trail"
    served = [json.loads(r["detail"]) for r in sessions if json.loads(r["detail"]).get("purpose") == "serve"]
    assert served and all(d.get("os_user") == CA_USER for d in served), (
        "A.31: the daemon's token sessions do not name the CA service account"
    )
    # Breakage: a request without a client certificate (an outsider) must be on the trail as such.
    since = _now(host)[:19]
    m = re.search(r'^public_host\s*=\s*"([^"]+)"', host.file(f"{CA_HOME}/ckms.toml").content_string, re.M)
    ph = m.group(1) if m else "127.0.0.1"
    status = host.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 --cacert {CA_HOME}/ca/ca.pem "
        f"-H 'Content-Type: application/pkcs10' --data-binary AAAA https://{ph}:8443/.well-known/est/simpleenroll"
    ).stdout.strip()
    denied = [
        r
        for r in probe(host, "trail", "--action", "auth.deny", "--since", since, "--limit", "20")["records"]
        if r["entity_id"] == "unauthenticated"
    ]
    evidence.add("request without a client certificate: HTTP status", status)
    evidence.add("its record", [{k: r[k] for k in ("at", "entity_id", "role", "detail")} for r in denied])
    assert status in ("401", "403"), f"A.31: a request without a client certificate was answered {status}"
    assert denied and all(json.loads(r["detail"]).get("peer") for r in denied), (
        "A.31: an outsider's request is not on the trail as unauthenticated, with its peer address"
    )
