#!/usr/bin/env python3
"""Power drill (F.52): the dummy UPS goes on battery, then low battery; the CA daemon stops cleanly
(SIGTERM, daemon.stop audit record), then the shutdown command runs (recorded in the lab instead of a
power-off); on power return the CA comes back healthy.

    python tests/lab/drills/power.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import shlex
import sys
import time

from drill import Lab, ca_daemon_deployed, ca_health, main, wait

EVENTS = "/var/log/ckms-ups-events.log"
SHUTDOWN_LOG = "/var/log/ckms-ups-shutdown.log"
AUDIT_Q = (
    "import sqlite3,sys; c=sqlite3.connect('file:/var/lib/ckms/db/ckms.sqlite3?mode=ro', uri=True); "
    "print(c.execute(\"select count(*) from audit_events where action='daemon.stop'\").fetchone()[0])"
)


def state(ca, dev: str, status: str, charge: int, runtime: int) -> None:
    ca.run(
        f"printf 'ups.status: {status}\\nbattery.charge: {charge}\\nbattery.runtime: {runtime}\\n"
        f"ups.load: 35\\n' > /etc/nut/{dev}",
        check=True,
    )


def audit_stops(ca) -> int | None:
    out = ca.run(f"python3 -c {shlex.quote(AUDIT_Q)}")  # the query has both quote kinds
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def body(lab: Lab, d, args) -> None:
    ca = lab.host("ca")
    name = ca.vars.get("ups_name", "ckmsups")
    dev, svc = f"{name}.dev", ca.vars.get("ups_ca_service", "ckms-ca")
    real = ca_daemon_deployed(ca)
    if not ca.ok(f"systemctl is-active --quiet {svc}"):
        d.record(
            "check:F.52.low_battery_stops_ca_then_host",
            ca.name,
            None,
            f"{svc} is not running on this lab",
            {},
        )
        return
    t0 = time.monotonic()
    ca.run(f"truncate -s0 {EVENTS} {SHUTDOWN_LOG}; rm -f /etc/killpower")
    stops_before = audit_stops(ca) if real else None
    ev: dict = {
        "CA daemon": "ckms (real)" if real else f"{svc} (stand-in: no daemon.stop audit record to check)"
    }
    try:
        state(ca, dev, "OB", 80, 1400)
        ev["on battery notified (s)"] = wait(lambda: ca.ok(f"grep -q ONBATT {EVENTS}"), 30)
        state(ca, dev, "OB LB", 20, 300)
        ev["low battery notified (s)"] = wait(lambda: ca.ok(f"grep -q LOWBATT {EVENTS}"), 30)
        ev["CA stopped by the shutdown sequence (s)"] = wait(
            lambda: ca.ok(f"grep -q 'stopped:' {SHUTDOWN_LOG}"), 90
        )
        ev["shutdown command done (s)"] = wait(lambda: ca.ok(f"grep -q 'power-off' {SHUTDOWN_LOG}"), 30)
        ev["shutdown log"] = ca.out(f"cat {SHUTDOWN_LOG}").splitlines()
        ev["CA unit after"] = [
            ca.out(f"systemctl show -p {p} --value {svc}") for p in ("ActiveState", "Result")
        ]
        if real:
            ev["daemon.stop audit records before/after"] = [stops_before, audit_stops(ca)]
    finally:
        state(ca, dev, "OL", 100, 1800)
        ca.run(f"rm -f /etc/killpower; systemctl restart nut-driver@{name} nut-server")
        wait(lambda: ca.out(f"upsc {name}@localhost ups.status 2>/dev/null") == "OL", 30)
        ca.run(f"systemctl restart nut-monitor; systemctl start {svc}")
    healthy = (
        (lambda: (ca_health(ca) or {}).get("status") == "ok")
        if real
        else (lambda: ca.ok(f"systemctl is-active --quiet {svc}"))
    )
    ev["power back: CA healthy after (s)"] = wait(healthy, 60)
    log = "\n".join(ev.get("shutdown log", []))
    ordered = (
        "stopping" in log
        and "stopped:" in log
        and "power-off" in log
        and log.index("stopping") < log.index("stopped:") < log.index("power-off")
    )
    clean = ev["CA unit after"] == ["inactive", "success"]
    audited = (not real) or (ev["daemon.stop audit records before/after"][1] or 0) > (stops_before or 0)
    passed = (
        all(
            ev[k] is not None
            for k in (
                "on battery notified (s)",
                "low battery notified (s)",
                "CA stopped by the shutdown sequence (s)",
                "power back: CA healthy after (s)",
            )
        )
        and ordered
        and clean
        and audited
    )
    d.record(
        "check:F.52.low_battery_stops_ca_then_host",
        ca.name,
        passed,
        None if passed else "notification, clean CA stop before power-off, audit record or recovery missing",
        ev,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("power", __doc__, body))
