#!/usr/bin/env python3
"""Router-compromise drill (F.50, F.18 a/b): (1) a widened rule on the router makes the rule-set check
fail and name F.18 a; (2) with the router's rules flushed, the rogue host's scan of the CA is detected by
the IDS on the CA host within 30 s; (3) re-converging the router restores the rules from the flow model.

    python tests/lab/drills/router_compromise.py [--inventory INV] [--reconverge "COMMAND"]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from drill import REPO, Lab, main, wait

DETECT_WITHIN_S = 30


def extra(p) -> None:
    p.add_argument(
        "--reconverge",
        default=None,
        help="command that re-converges the router (default: ansible-playbook ansible/site.yml "
        "--limit <router> --tags router_firewall)",
    )


def run_check(inventory, router_name: str) -> tuple[int, list[dict]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(REPO / "hardening/checks/test_router.py"),
                "-k",
                "rules_match_flow_model",
                f"--hosts=ansible://{router_name}",
                f"--ansible-inventory={inventory}",
                f"--ckms-results={tmp.name}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return p.returncode, json.loads(open(tmp.name).read() or "[]")


def alerts(ca, since: float, src: str) -> list[dict]:
    out = ca.out("tail -n 3000 /var/log/suricata/eve.json")
    found = []
    for line in out.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event_type") == "alert" and ev.get("src_ip") == src:
            ts = ev["timestamp"]
            t = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            if t >= since - 1:
                found.append(ev)
    return found


def body(lab: Lab, d, args) -> None:
    router, ca, rogue = lab.host("router"), lab.host("ca"), lab.host("rogue")
    ca_ip, rogue_ip, lan = ca.addr("ca"), rogue.addr("lan"), rogue.addr("lan").rsplit(".", 1)[0] + ".0/24"
    reconverge = (
        args.reconverge
        or os.environ.get("CKMS_DRILL_RECONVERGE")
        or (
            f"ansible-playbook -i {args.inventory} {REPO}/ansible/site.yml --limit {router.name} --tags router_firewall"
        )
    )
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    )

    def converge() -> tuple[int, float, str]:
        t = time.monotonic()
        p = subprocess.run(reconverge, shell=True, env=env, capture_output=True, text=True, timeout=900)
        return p.returncode, round(time.monotonic() - t, 1), (p.stdout + p.stderr)[-600:]

    # (1) widened rule -> the check fails and names the item
    t0 = time.monotonic()
    router.run(
        f"nft insert rule inet ckms_router forward ip saddr {lan} tcp dport 8443 accept comment widened-by-drill",
        check=True,
    )
    rc, recs = run_check(args.inventory, router.name)
    msgs = [r.get("message") or "" for r in recs if r["outcome"] == "failed"]
    rc2, secs, out = converge()
    rc3, recs3 = run_check(args.inventory, router.name)
    ev = {
        "check rc with the widened rule": rc,
        "failure messages": msgs,
        "re-converge (rc, s)": [rc2, secs],
        "check after re-converge": [r["outcome"] for r in recs3],
    }
    passed = (
        rc != 0
        and any("F.18 a" in m and "outside the flow model" in m for m in msgs)
        and rc2 == 0
        and rc3 == 0
    )
    d.record(
        "check:F.18.a.drill_widened_rule_detected",
        router.name,
        passed,
        None
        if passed
        else f"widened rule not reported as F.18 a, or not repaired by re-converge: {out[-300:]}",
        ev,
        time.monotonic() - t0,
    )

    # (2) router compromised: rules flushed, the rogue host scans the CA, the IDS on the CA sees it
    t0 = time.monotonic()
    router.run("nft flush ruleset", check=True)
    since = float(ca.out("date +%s.%N"))
    reach = rogue.ok(f"nc -z -w 2 {ca_ip} 8443")
    rogue.run(f"nmap -n -Pn -sS --max-retries 0 --max-rate 300 -p 1-100 {ca_ip}", timeout=120)
    detect = wait(lambda: bool(alerts(ca, since, rogue_ip)), DETECT_WITHIN_S)
    got = alerts(ca, since, rogue_ip)
    sigs = sorted({a["alert"]["signature"] for a in got})
    forwarded = ca.out("journalctl -t ckms-ids --no-pager -o cat -n 200 | grep -c " + rogue_ip + " || true")
    ev = {
        "rogue reached the CA with the rules flushed": reach,
        "seconds to first IDS alert": detect,
        "signatures": sigs,
        "alerts forwarded to syslog": forwarded,
    }
    passed = detect is not None and detect <= DETECT_WITHIN_S
    d.record(
        "check:F.50.c.drill_router_compromise_detected",
        ca.name,
        passed,
        None if passed else f"no IDS alert for the rogue host within {DETECT_WITHIN_S} s",
        ev,
        time.monotonic() - t0,
    )

    # (3) re-converge restores the rules
    t0 = time.monotonic()
    rc, secs, out = converge()
    blocked = not rogue.ok(f"nc -z -w 2 {ca_ip} 8443")
    rc3, recs3 = run_check(args.inventory, router.name)
    ev = {
        "re-converge rc": rc,
        "re-converge seconds": secs,
        "rogue blocked again": blocked,
        "rule-set check after": [r["outcome"] for r in recs3],
    }
    passed = rc == 0 and blocked and rc3 == 0
    d.record(
        "check:F.50.c.drill_reconverge_restores_rules",
        router.name,
        passed,
        None if passed else f"re-converge did not restore the flow-model rules: {out[-300:]}",
        ev,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("router_compromise", __doc__, body, extra))
