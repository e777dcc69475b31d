#!/usr/bin/env python3
"""Time drill (A.33-A.35): cut the CA off its time source until chrony reports "Not synchronised";
issuance is refused; restore the source; chrony resynchronises and issuance resumes.

chrony rightly keeps the last synchronisation (holdover) while a source is merely silent, so the drill
blocks NTP on the CA and restarts chronyd: what a CA reboot during a time-source outage looks like.

    python tests/lab/drills/time_source.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import sys
import time

from drill import Lab, ca_daemon_deployed, enrol, main, wait

BLOCK = (
    "nft add table inet ckms_drill_time; nft add chain inet ckms_drill_time out "
    "'{ type filter hook output priority -5; policy accept; }'; "
    "nft add rule inet ckms_drill_time out udp dport 123 drop"
)
UNBLOCK = "nft delete table inet ckms_drill_time"


def unsync(ca) -> bool:
    return ca.out("chronyc -c tracking").endswith("Not synchronised")


def body(lab: Lab, d, args) -> None:
    ca = lab.host("ca")
    term = lab.host("terminal") if lab.has("terminal") else None
    deployed = ca_daemon_deployed(ca) and term is not None
    t0 = time.monotonic()
    ev: dict = {"tracking before": ca.out("chronyc -c tracking")}
    if unsync(ca):
        ev["note"] = "chrony was not synchronised before the drill"
    if deployed:
        ev["issuance before"] = enrol(term, "time-before")[:2]
    try:
        ca.run(BLOCK, check=True)
        ca.run("systemctl restart chrony", check=True)
        ev["seconds until Not synchronised"] = wait(lambda: unsync(ca), 60)
        ev["tracking while cut off"] = ca.out("chronyc -c tracking")
        if deployed:
            ok, secs, out = enrol(term, "time-cut")
            ev["issuance while unsynchronised"] = {"ok": ok, "seconds": secs, "output": out[-300:]}
            refused = not ok
    finally:
        ca.run(UNBLOCK)
        ca.run("chronyc burst 4/4 >/dev/null 2>&1 || true")
    ev["seconds until synchronised again"] = wait(lambda: not unsync(ca), 90)
    ev["tracking after"] = ca.out("chronyc -c tracking")
    synced_again = ev["seconds until synchronised again"] is not None
    lost = ev["seconds until Not synchronised"] is not None
    d.record(
        "check:A.35.drill_time_source_loss_detected",
        ca.name,
        lost and synced_again,
        None if lost and synced_again else "chrony did not report the loss or did not resynchronise",
        ev,
        time.monotonic() - t0,
    )
    if not deployed:
        d.record(
            "check:A.33.issuance_refused_when_unsynchronised",
            ca.name,
            None,
            "CA daemon not deployed on this lab: issuance part not run",
            {},
        )
        return
    resumed = wait(lambda: enrol(term, "time-after")[0], 60, interval=2)
    ev["seconds until issuance resumed"] = resumed
    passed = refused and resumed is not None
    d.record(
        "check:A.33.issuance_refused_when_unsynchronised",
        ca.name,
        passed,
        None if passed else "issuance was not refused while unsynchronised or did not resume",
        ev,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("time_source", __doc__, body))
