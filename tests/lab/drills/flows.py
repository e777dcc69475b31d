#!/usr/bin/env python3
"""Flows drill (F.18 a, F.20, A.66): the terminal enrols over EST through the router; the rogue host is
dropped by the router and logged; SSH to the CA only from the registered admin address.

    python tests/lab/drills/flows.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import sys
import time

from drill import Lab, ca_daemon_deployed, enrol, main


def body(lab: Lab, d, args) -> None:
    router, ca, term, rogue = lab.host("router"), lab.host("ca"), lab.host("terminal"), lab.host("rogue")
    ca_ip, rogue_ip = ca.addr("ca"), rogue.addr("lan")
    logf = router.vars.get("router_log_file", "/var/log/ulog/ckms-router.log")
    t0 = time.monotonic()
    ev: dict = {}
    if ca_daemon_deployed(ca):
        ok, secs, out = enrol(term, "flows")
        ev["terminal EST enrolment"] = {"ok": ok, "seconds": secs, "output": out[-200:]}
    else:
        ok = term.ok(f"nc -z -w 3 {ca_ip} 8443")
        ev["terminal -> CA 8443 (CA daemon not deployed: TCP reachability only)"] = ok
    crl = term.ok(f"nc -z -w 3 {ca_ip} 8080")
    ev["terminal -> CA 8080 (crl)"] = crl
    before = int(router.out(f"grep -c 'SRC={rogue_ip} ' {logf} || true") or 0)
    rogue_rc = {p: rogue.run(f"nc -z -w 2 {ca_ip} {p}").returncode for p in (8443, 8080, 22, 443)}
    ev["rogue -> CA (nc rc, 0 = reached)"] = rogue_rc
    logged = None
    for _ in range(10):
        logged = int(router.out(f"grep -c 'SRC={rogue_ip} ' {logf} || true") or 0) - before
        if logged > 0:
            break
        time.sleep(0.5)
    ev["new drop-log lines for the rogue host"] = logged
    ev["drop log sample"] = router.out(f"grep 'SRC={rogue_ip} ' {logf} | tail -1")
    passed = ok and crl and all(rc != 0 for rc in rogue_rc.values()) and logged > 0
    d.record(
        "check:F.18.a.drill_modelled_flows_only",
        router.name,
        passed,
        None if passed else "a modelled flow failed or the rogue host reached the CA / was not logged",
        ev,
        time.monotonic() - t0,
    )

    t0 = time.monotonic()
    ev = {}
    if lab.has("admin"):
        admin = lab.host("admin")
        ev["admin (registered) -> CA ssh"] = admin.ok(f"nc -z -w 3 {ca_ip} 22")
    else:
        ev["admin (registered) -> CA ssh"] = "no admin host in this topology"
    ev["rogue -> CA ssh (nc rc)"] = rogue_rc[22]
    ev["rogue -> router ssh (nc rc)"] = rogue.run(f"nc -z -w 2 {router.addr('lan')} 22").returncode
    ev["VPN"] = (
        "WireGuard endpoint with registered peers is checked by check:F.17.vpn_endpoint_configured; "
        "the VPN data path (peer -> CA ssh) is not driven by this drill"
    )
    passed = (
        ev["admin (registered) -> CA ssh"] is not False
        and rogue_rc[22] != 0
        and ev["rogue -> router ssh (nc rc)"] != 0
    )
    d.record(
        "check:A.66.drill_admin_ssh_registered_only",
        router.name,
        passed,
        None if passed else "SSH to the CA/router from an unregistered host, or not from the admin PC",
        ev,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("flows", __doc__, body))
