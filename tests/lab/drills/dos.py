#!/usr/bin/env python3
"""DoS drill (F.19, F.20): a bounded SYN flood from the rogue host (lab addresses only, 500 packets/s for
5 s) at the CA's EST port does not stop the terminal's issuance; the router's per-source limits engage
and log.

    python tests/lab/drills/dos.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from drill import Lab, ca_daemon_deployed, enrol, main


def counter(router, chain: str) -> int:
    out = router.out(f"nft -j list chain inet ckms_router {chain}")
    try:
        rules = [x["rule"] for x in json.loads(out)["nftables"] if "rule" in x]
        return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)
    except (ValueError, KeyError):
        return -1


def body(lab: Lab, d, args) -> None:
    router, ca, term, rogue = lab.host("router"), lab.host("ca"), lab.host("terminal"), lab.host("rogue")
    ca_ip, rogue_ip = ca.addr("ca"), rogue.addr("lan")
    logf = router.vars.get("router_log_file", "/var/log/ulog/ckms-router.log")
    t0 = time.monotonic()
    before = {c: counter(router, c) for c in ("log_drop_syn_flood", "log_drop_forward")}
    # bounded flood: 2500 SYNs at 500/s from the rogue host's own address to the CA's EST port
    flood = subprocess.Popen(
        rogue.argv(f"timeout 15 hping3 -q -S -p 8443 -i u2000 -c 2500 {ca_ip}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)
    during = []
    deployed = ca_daemon_deployed(ca)
    for i in range(3):
        if deployed:
            ok, secs, _ = enrol(term, f"dos{i}")
        else:
            t = time.monotonic()
            ok = term.ok(f"nc -z -w 3 {ca_ip} 8443")
            secs = round(time.monotonic() - t, 2)
        during.append({"ok": ok, "seconds": secs})
    flood_out = flood.communicate(timeout=60)[0]
    after = {c: counter(router, c) for c in ("log_drop_syn_flood", "log_drop_forward")}
    logged = int(router.out(f"grep -c 'ckms-dos-syn .*SRC={rogue_ip} ' {logf} || true") or 0)
    tracked = rogue_ip in router.out("nft list set inet ckms_router dos_syn")
    ev = {
        "flood": flood_out.strip().splitlines()[-3:],
        "terminal during the flood" + ("" if deployed else " (CA daemon not deployed: TCP connect)"): during,
        "drop counters before/after": [before, after],
        "syn-flood log lines from rogue": logged,
        "rogue in the per-source SYN meter": tracked,
    }
    passed = (
        all(x["ok"] for x in during)
        and after["log_drop_syn_flood"] > before["log_drop_syn_flood"]
        and logged > 0
        and tracked
    )
    d.record(
        "check:F.19.drill_syn_flood_bounded",
        router.name,
        passed,
        None if passed else "the terminal lost service during the flood or the limits did not engage/log",
        ev,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("dos", __doc__, body))
