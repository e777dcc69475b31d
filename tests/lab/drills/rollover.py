#!/usr/bin/env python3
"""CA key rollover drill (A.59; issue 14 part 3, docs/ca-key-rollover.md): the CA moves to a new key under
2-of-3 custody, while devices enrolled before and after keep verifying at the IoT hub. The new key keeps the
curve the lab's security policy states (a move to P-384 changes that policy, and is what
tests/integration/test_rollover_daemon.py rolls through).

1. Two devices are enrolled on the terminal under the current key; both are accepted at the hub.
2. ``ckms ca rollover begin`` (two custodians): new key in the token, new CA certificate, both links. The
   daemon restarts and site.yml re-converges the terminal and the hub: they now trust both keys. The old
   devices are still accepted.
3. ``ckms ca rollover activate`` (two custodians), restart, re-converge: the relay carries one CRL per key.
   Two devices are enrolled under the new key and accepted at the hub; the old ones too.
4. One old and one new device are revoked on the terminal: both are refused at the hub (the retired key's
   CRLs still flow), the other two are still accepted.
5. ``ckms hsm destroy-key`` of the retired key: refused with one custodian (custody), and refused with two
   while that key still has live certificates (the destroy gate). Both refusals are on the audit trail.
   (The destruction itself, once every certificate of the key has expired or is revoked and listed, is
   proven by tests/integration/test_rollover_cli.py: a lab's old key issued the people's and the TLS
   certificates, which live on.)

The drill leaves the lab's CA on its new key, as a real rollover does. ``make lab`` runs it last, so the
report's checks that follow see a CA after its rollover; ``make drill-rollover`` runs it again (one more
generation each time).

    python tests/lab/drills/rollover.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from drill import DRILL_OPERATOR, REPO, Lab, ca_daemon_deployed, ca_health, main, wait

HOME = "/var/lib/ckms"
CKMS = (
    f"runuser -u ckms -- env CKMS_HOME={HOME} SOFTHSM2_CONF={HOME}/hsm/softhsm2.conf /opt/ckms/venv/bin/ckms"
)
WORK = "/tmp/ckms-rollover-drill"
HUB_CONF = "/etc/ckms-terminal/hub.conf"
# the hub learns a revocation within the CA's publication delay + the relay's interval (+ slack)
REFUSE_WITHIN_S = 240


def _stage_custodians(lab: Lab, ca, count: int) -> list[str]:
    """``count`` custodians' shares and passphrases in a private directory on the CA host (0700, ckms), sent
    over SSH's stdin (never a command line); the ``--share-file``/``--passphrase-file`` arguments."""
    custodians = lab.hostvars[ca.name].get("ckms_ca_custodians") or []
    usable = [
        c
        for c in custodians
        if (Path(c["dest"]) / f"{c['name']}.share").is_file() and (Path(c["dest"]) / "passphrase").is_file()
    ]
    if len(usable) < count:
        raise AssertionError(f"only {len(usable)} custodians' material on this controller, {count} needed")
    ca.run(f"rm -rf {WORK}-custody && install -d -m 0700 -o ckms -g ckms {WORK}-custody", check=True)
    shares, passes = [], []
    for c in usable[:count]:
        for src, dest in (
            (Path(c["dest"]) / f"{c['name']}.share", f"{WORK}-custody/{c['name']}.share"),
            (Path(c["dest"]) / "passphrase", f"{WORK}-custody/{c['name']}.passphrase"),
        ):
            proc = subprocess.run(
                ca.argv(f"umask 077 && cat > {dest} && chown ckms:ckms {dest}"),
                input=src.read_bytes(),
                capture_output=True,
                timeout=60,
            )
            if proc.returncode != 0:
                raise AssertionError(f"cannot stage {dest}: {proc.stderr.decode()[-300:]}")
        shares += ["--share-file", f"{WORK}-custody/{c['name']}.share"]
        passes += ["--passphrase-file", f"{WORK}-custody/{c['name']}.passphrase"]
    return shares + passes


def _custody(lab: Lab, ca, count: int, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A custody-gated ckms command on the CA host with ``count`` custodians present."""
    try:
        args = " ".join(shlex.quote(a) for a in _stage_custodians(lab, ca, count))
        return ca.run(f"cd / && {CKMS} {command} {args}", timeout=timeout)
    finally:
        ca.run(f"rm -rf {WORK}-custody")


def _restart(ca) -> float:
    ca.run("systemctl restart ckms-ca", check=True, timeout=120)
    took = wait(lambda: (ca_health(ca) or {}).get("status") == "ok", 90)
    if took is None:
        raise AssertionError(f"the CA daemon is not healthy after its restart: {ca_health(ca)}")
    return took


def _trusted_keys(host, path: str) -> int:
    """How many CA certificates a trust bundle on a lab host holds."""
    out = host.out(f"grep -c 'BEGIN CERTIFICATE' {path}")
    return int(out) if out.isdigit() else 0


def _reconverge(lab: Lab, args) -> dict:
    """The roles that hand out the CA's certificates and CRL addresses (site.yml, roles ckms_ca and iot_hub):
    the terminal's and the people's trust bundle, the hub's, and the relay's CRL addresses follow the keys."""
    command = (
        os.environ.get("CKMS_ROLLOVER_RECONVERGE")
        or f"{REPO}/scripts/lab-converge.sh site.yml --tags ckms_ca,iot_hub"
    )
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    t = time.monotonic()
    p = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=1500)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise AssertionError(f"re-converge failed ({p.returncode}): {out[-1500:]}")
    return {"seconds": round(time.monotonic() - t, 1), "recap": out[out.rfind("PLAY RECAP") :][:600]}


class Devices:
    """Devices enrolled on the terminal by the drill's operator, and their connections to the hub."""

    def __init__(self, terminal) -> None:
        self.t = terminal
        self.t.run(f"rm -rf {WORK} && install -d -m 0700 -o {DRILL_OPERATOR} {WORK}", check=True)

    def _as_operator(self, script: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.t.run(
            f"cd /tmp && runuser -u {DRILL_OPERATOR} -- sh -c {shlex.quote(script)}", timeout=timeout
        )

    def enrol(self, name: str) -> dict:
        p = self._as_operator(
            f"ckms-enroll {name} {WORK} >/dev/null 2>&1 && openssl x509 -in {WORK}/{name}.pem -noout -text"
        )
        if p.returncode != 0:
            raise AssertionError(f"enrolment of {name} failed: {p.stderr[-400:]}")
        text = p.stdout
        aki = (
            text.split("X509v3 Authority Key Identifier:", 1)[1].split("\n", 2)[1].strip()
            if "Authority Key" in text
            else ""
        )
        algorithm = text.split("Signature Algorithm:", 1)[1].split("\n", 1)[0].strip()
        return {"device": name, "issuer key id": aki, "signature": algorithm}

    def accepted(self, name: str) -> bool:
        script = (
            f'. {HUB_CONF} && ckms hub connect --hub "$HUB_DEVICE" --hub-cert "$HUB_CERT" '
            f"--cert {WORK}/{name}.pem --key {WORK}/{name}.key >/dev/null 2>&1"
        )
        return self._as_operator(script, timeout=30).returncode == 0

    def revoke(self, name: str) -> None:
        p = self._as_operator(f"ckms terminal revoke --device-id {name} --reason keyCompromise --yes")
        if p.returncode != 0:
            raise AssertionError(f"revocation of {name} failed: {p.stderr[-400:]}")

    def cleanup(self) -> None:
        self.t.run(f"rm -rf {WORK}")


def _audit_denials(ca, since_seq: int) -> list[dict]:
    query = (
        "import json,sqlite3; c=sqlite3.connect('file:/var/lib/ckms/db/ckms.sqlite3?mode=ro', uri=True); "
        "print(json.dumps([dict(zip(('seq','action','outcome','detail'), r)) for r in c.execute("
        f"\"select seq, action, outcome, detail from audit_events where seq > {since_seq} and action='hsm.key.destroy'\")]))"
    )
    out = ca.run(f"python3 -c {shlex.quote(query)}")
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


def _generations(ca) -> list[dict]:
    """``ckms ca rollover status``: each key generation's role, label, live certificates and latest CRL."""
    out = ca.run(f"cd / && {CKMS} ca rollover status --json")
    return json.loads(out.stdout).get("generations", []) if out.returncode == 0 and out.stdout.strip() else []


def _last_seq(ca) -> int:
    query = (
        "import sqlite3; c=sqlite3.connect('file:/var/lib/ckms/db/ckms.sqlite3?mode=ro', uri=True); "
        "print(c.execute('select coalesce(max(seq),0) from audit_events').fetchone()[0])"
    )
    out = ca.run(f"python3 -c {shlex.quote(query)}")
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0


def body(lab: Lab, d, args) -> None:
    ca = lab.host("ca")
    checks = ("check:A.59.drill_ca_key_rollover", "check:A.59.drill_retired_key_destruction_guarded")
    if not (ca_daemon_deployed(ca) and lab.has("terminal") and lab.has("hub")):
        for check in checks:
            d.record(check, ca.name, None, "no CA daemon, terminal or IoT hub on this lab: drill not run", {})
        return
    terminal = lab.host("terminal")
    devices = Devices(terminal)
    t0 = time.monotonic()
    ev: dict = {}
    ev["generations before"] = _generations(ca)
    problems: list[str] = []

    def expect(label: str, names: dict[str, bool], within: float = 0) -> None:
        """Each device accepted (True) or refused (False) at the hub, waiting up to ``within`` seconds."""
        seen: dict[str, bool] = {}

        def settled() -> bool:
            seen.update({n: devices.accepted(n) for n in names})
            return seen == names

        took = wait(settled, within, interval=5) if within else (0.0 if settled() else None)
        ev[f"hub: {label}"] = {"expected": names, "seen": seen, "settled after (s)": took}
        if took is None:
            problems.append(f"{label}: expected {names}, the hub gave {seen}")

    try:
        ev["old devices"] = [devices.enrol("rollover-old-a"), devices.enrol("rollover-old-b")]
        expect("before the rollover", {"rollover-old-a": True, "rollover-old-b": True}, within=120)

        begun = _custody(lab, ca, 2, "ca rollover begin --json")
        ev["begin (2 custodians)"] = {"rc": begun.returncode, "out": (begun.stdout + begun.stderr)[-800:]}
        if begun.returncode != 0:
            raise AssertionError(f"rollover begin failed: {begun.stderr[-400:]}")
        ev["restart after begin: healthy after (s)"] = _restart(ca)
        ev["re-converge after begin"] = _reconverge(lab, args)
        ev["CA certificates trusted (terminal, hub)"] = trusted = [
            _trusted_keys(terminal, "/etc/ckms-terminal/ca.pem"),
            _trusted_keys(lab.host("hub"), "/etc/ckms-hub/ca.pem"),
        ]
        keys = len(_generations(ca))  # the old key(s) and the new one
        if trusted != [keys, keys]:
            problems.append(
                f"after begin the terminal and the hub should trust {keys} keys, they hold {trusted}"
            )
        expect("between begin and activate", {"rollover-old-a": True, "rollover-old-b": True}, within=120)

        active = _custody(lab, ca, 2, "ca rollover activate --json")
        ev["activate (2 custodians)"] = {
            "rc": active.returncode,
            "out": (active.stdout + active.stderr)[-800:],
        }
        if active.returncode != 0:
            raise AssertionError(f"rollover activate failed: {active.stderr[-400:]}")
        ev["restart after activate: healthy after (s)"] = _restart(ca)
        ev["re-converge after activate"] = _reconverge(lab, args)
        ev["new devices"] = [devices.enrol("rollover-new-a"), devices.enrol("rollover-new-b")]
        old_key, new_key = ev["old devices"][0]["issuer key id"], ev["new devices"][0]["issuer key id"]
        if old_key == new_key:
            problems.append(f"the new devices were not issued under the new key: {ev['new devices']}")
        everyone = dict.fromkeys(
            ("rollover-old-a", "rollover-old-b", "rollover-new-a", "rollover-new-b"), True
        )
        expect("after activate (the new key's CRL reaches the hub)", everyone, within=REFUSE_WITHIN_S)

        t_revoke = time.monotonic()
        devices.revoke("rollover-old-b")
        devices.revoke("rollover-new-b")
        after = {**everyone, "rollover-old-b": False, "rollover-new-b": False}
        expect("after revoking one old and one new device", after, within=REFUSE_WITHIN_S)
        ev["revocation on the terminal → refused at the hub, both keys (s)"] = round(
            time.monotonic() - t_revoke, 1
        )
        ev["generations after"] = _generations(ca)
    except (AssertionError, subprocess.TimeoutExpired, ValueError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    ok = not problems
    d.record(checks[0], ca.name, ok, None if ok else "; ".join(problems)[:600], ev, time.monotonic() - t0)

    # The retired key: never destroyed by one custodian, nor while it has live certificates.
    t0 = time.monotonic()
    ev2: dict = {}
    problems = []
    retired = [g for g in _generations(ca) if g.get("role") == "retired"]
    if not retired:
        d.record(
            checks[1], ca.name, False, "no retired generation after the rollover", ev2, time.monotonic() - t0
        )
        devices.cleanup()
        return
    label = retired[0]["key_label"]
    ev2["retired key"] = retired[0]
    seq = _last_seq(ca)
    try:
        one = _custody(lab, ca, 1, f"hsm destroy-key --label {shlex.quote(label)} --yes --json")
        two = _custody(lab, ca, 2, f"hsm destroy-key --label {shlex.quote(label)} --yes --json")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        d.record(checks[1], ca.name, False, f"{type(exc).__name__}: {exc}"[:600], ev2, time.monotonic() - t0)
        devices.cleanup()
        return
    ev2["one custodian"] = {"rc": one.returncode, "stderr": one.stderr[-400:]}
    ev2["two custodians, live certificates"] = {"rc": two.returncode, "stderr": two.stderr[-400:]}
    still_there = ca.ok(f"cd / && {CKMS} ca rollover status --json | grep -q {shlex.quote(label)}")
    ev2["key still listed"] = still_there
    denials = _audit_denials(ca, seq)
    ev2["audit trail"] = denials
    if one.returncode == 0 or two.returncode == 0 or not still_there:
        problems.append("the retired key was destroyed with one custodian or while it had live certificates")
    if "2 of 3" not in one.stderr or "still needed" not in two.stderr:
        problems.append(
            "the refusals do not say why: custody (one custodian) and the gate (live certificates)"
        )
    if len([r for r in denials if r["outcome"] == "denied"]) < 2:
        problems.append(f"the trail does not hold both refused destructions: {denials}")
    ok = not problems
    d.record(checks[1], ca.name, ok, None if ok else "; ".join(problems)[:600], ev2, time.monotonic() - t0)
    devices.cleanup()


if __name__ == "__main__":
    sys.exit(main("rollover", __doc__, body))
