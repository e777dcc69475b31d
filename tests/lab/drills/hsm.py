#!/usr/bin/env python3
"""HSM-failure drill (E.36, E.37): the token becomes unavailable (its store is taken away from the CA
service user); the next issuance fails and the daemon enters its error state (503, no signatures);
the token comes back, an administrator runs `ckms ca recover` (self-tests first); issuance resumes.

    python tests/lab/drills/hsm.py [--inventory INV] [--results build/report/drills.json]
"""

from __future__ import annotations

import sys
import time

from drill import Lab, ca_daemon_deployed, ca_health, enrol, main, wait

TOKENS = "/var/lib/ckms/hsm/tokens"
RECOVER = (
    "runuser -u ckms -- env CKMS_HOME=/var/lib/ckms SOFTHSM2_CONF=/var/lib/ckms/hsm/softhsm2.conf "
    "/opt/ckms/venv/bin/ckms ca recover --home /var/lib/ckms"
)


def body(lab: Lab, d, args) -> None:
    ca = lab.host("ca")
    if not (ca_daemon_deployed(ca) and lab.has("terminal")):
        for check in (
            "check:E.36.drill_hsm_unavailable_error_state",
            "check:E.37.drill_token_restored_service_resumes",
        ):
            d.record(check, ca.name, None, "CA daemon not deployed on this lab: drill not run", {})
        return
    term = lab.host("terminal")
    t0 = time.monotonic()
    ev: dict = {"issuance before": enrol(term, "hsm-before")[:2]}
    try:
        ca.run(
            f"mv {TOKENS} {TOKENS}.drill-away && mkdir -m 0700 {TOKENS} && chown ckms:ckms {TOKENS}",
            check=True,
        )
        ok, secs, out = enrol(term, "hsm-gone")
        ev["issuance with the token gone"] = {"ok": ok, "output": out[-300:]}
        ev["error state entered (s)"] = wait(
            lambda: (ca_health(ca) or {}).get("status") not in (None, "ok"), 30
        )
        ev["health in error"] = ca_health(ca)
        ok2, _, _ = enrol(term, "hsm-error")
        ev["issuance while in error state"] = ok2
    finally:
        ca.run(f"test -d {TOKENS}.drill-away && rm -rf {TOKENS} && mv {TOKENS}.drill-away {TOKENS}")
    passed = not ok and ev["error state entered (s)"] is not None and not ok2
    d.record(
        "check:E.36.drill_hsm_unavailable_error_state",
        ca.name,
        passed,
        None if passed else "the daemon signed or did not enter its error state without the token",
        ev,
        time.monotonic() - t0,
    )
    t0 = time.monotonic()
    rec = ca.run(RECOVER, timeout=120)
    ev2 = {"ckms ca recover": (rec.stdout + rec.stderr).strip()[-300:], "rc": rec.returncode}
    ev2["issuance resumed (s)"] = wait(lambda: enrol(term, "hsm-after")[0], 60, interval=2)
    passed = rec.returncode == 0 and ev2["issuance resumed (s)"] is not None
    d.record(
        "check:E.37.drill_token_restored_service_resumes",
        ca.name,
        passed,
        None if passed else "recovery or issuance after recovery failed",
        ev2,
        time.monotonic() - t0,
    )


if __name__ == "__main__":
    sys.exit(main("hsm", __doc__, body))
