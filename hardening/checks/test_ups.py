"""Checks of the ups role (F.52) on the CA server: the UPS is monitored by NUT with notifications, the
thresholds fit a 1,500 VA / 30 min unit, and on low battery the CA daemon is stopped gracefully before
the power-off command runs.

The power sequence (on battery, low battery, power back) stops the CA, so it runs here only when
CKMS_UPS_DRILL=1 (the Molecule scenario, a disposable host); on the full lab the power drill
(tests/lab/drills/power.sh) runs it and records check:F.52.low_battery_stops_ca_then_host."""

from __future__ import annotations

import os
import time

import pytest

testinfra_hosts = ["ansible://ca"]

UPS = "ckmsups"
EVENTS = "/var/log/ckms-ups-events.log"
SHUTDOWN_LOG = "/var/log/ckms-ups-shutdown.log"


def var(host, name: str, default):
    return host.ansible.get_variables().get(name, default)


@pytest.mark.check("check:F.52.ups_monitored")
def test_ups_monitored(host, evidence):
    name = var(host, "ups_name", UPS)
    for svc in (f"nut-driver@{name}", "nut-server", "nut-monitor"):
        s = host.service(svc)
        assert s.is_running and s.is_enabled, f"F.52: {svc} is not running and enabled"
    st = host.run(f"upsc {name}@localhost")
    evidence.add("upsc", st.stdout.strip().splitlines())
    assert st.rc == 0 and "ups.status:" in st.stdout, "F.52: upsd does not report the UPS"
    mon = host.file("/etc/nut/upsmon.conf").content_string
    lines = [ln.strip() for ln in mon.splitlines() if ln.strip() and not ln.startswith("#")]
    evidence.add("upsmon directives", [ln for ln in lines if not ln.startswith("MONITOR")])
    assert any(ln.startswith(f"MONITOR {name}@localhost") and ln.endswith("primary") for ln in lines), (
        "F.52: upsmon is not the primary monitor of the UPS"
    )
    assert 'SHUTDOWNCMD "/usr/local/sbin/ckms-ups-shutdown"' in lines, (
        "F.52: SHUTDOWNCMD is not the graceful CA stop"
    )
    for ev in ("ONBATT", "LOWBATT", "FSD"):
        assert f"NOTIFYFLAG {ev} SYSLOG+EXEC" in lines, f"F.52: no notification for {ev}"
    script = host.file("/usr/local/sbin/ckms-ups-shutdown").content_string
    ca = var(host, "ups_ca_service", "ckms-ca")
    assert f"systemctl stop {ca}.service" in script, "F.52: the shutdown sequence does not stop the CA daemon"
    listen = host.file("/etc/nut/upsd.conf").content_string
    assert "LISTEN 127.0.0.1" in listen and "0.0.0.0" not in listen, "F.52: upsd listens beyond loopback"
    low_rt = int(var(host, "ups_low_runtime_s", 600))
    nominal_rt = int(var(host, "ups_nominal_runtime_s", 1800))
    evidence.add(
        "thresholds",
        {
            "nominal VA": var(host, "ups_nominal_va", 1500),
            "runtime s": nominal_rt,
            "low runtime s": low_rt,
            "low charge %": var(host, "ups_low_charge_pct", 30),
        },
    )
    assert 0 < low_rt < nominal_rt, "F.52: low-runtime threshold must lie inside the unit's runtime"


def _set_state(host, dev: str, **values) -> None:
    body = "\\n".join(f"{k.replace('_', '.')}: {v}" for k, v in values.items())
    host.run(f"printf '{body}\\n' > /etc/nut/{dev} && touch /etc/nut/{dev}")


def _wait(host, command: str, timeout: float) -> float | None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if host.run(command).rc == 0:
            return round(time.time() - t0, 1)
        time.sleep(1)
    return None


@pytest.mark.check("check:F.52.low_battery_stops_ca_then_host")
def test_low_battery_stops_ca_then_host(host, evidence):
    if os.environ.get("CKMS_UPS_DRILL") != "1":
        pytest.skip("stops the CA: runs in the Molecule scenario (CKMS_UPS_DRILL=1) or as the power drill")
    name, dev = var(host, "ups_name", UPS), f"{var(host, 'ups_name', UPS)}.dev"
    ca = var(host, "ups_ca_service", "ckms-ca")
    host.run(f"truncate -s0 {EVENTS} {SHUTDOWN_LOG}; rm -f /etc/killpower")
    assert host.service(ca).is_running, f"{ca} must run before the drill"
    timings = {}
    try:
        _set_state(host, dev, ups_status="OB", battery_charge=80, battery_runtime=1400, ups_load=35)
        timings["onbatt_notified_s"] = _wait(host, f"grep -q ONBATT {EVENTS}", 30)
        _set_state(host, dev, ups_status="OB LB", battery_charge=20, battery_runtime=300, ups_load=35)
        timings["lowbatt_notified_s"] = _wait(host, f"grep -q LOWBATT {EVENTS}", 30)
        timings["ca_stopped_s"] = _wait(host, f"grep -q 'stopped:' {SHUTDOWN_LOG}", 60)
        timings["shutdown_cmd_done_s"] = _wait(host, f"grep -q 'power-off' {SHUTDOWN_LOG}", 30)
        evidence.add("timings", timings)
        evidence.add("shutdown log", host.file(SHUTDOWN_LOG).content_string.strip().splitlines())
        evidence.add("events", host.file(EVENTS).content_string.strip().splitlines())
        state = [
            host.run(f"systemctl show -p {p} --value {ca}").stdout.strip() for p in ("ActiveState", "Result")
        ]
        evidence.add(f"{ca} state after", state)
        assert timings["onbatt_notified_s"] is not None, "F.52: no on-battery notification"
        assert timings["lowbatt_notified_s"] is not None, "F.52: no low-battery notification"
        assert timings["ca_stopped_s"] is not None, "F.52: the shutdown sequence did not stop the CA"
        assert state[0] == "inactive" and state[1] == "success", f"F.52: the CA did not stop cleanly: {state}"
        log = host.file(SHUTDOWN_LOG).content_string
        assert log.index("stopping") < log.index("stopped:") < log.index("power-off"), (
            "F.52: power-off came before the CA stopped"
        )
    finally:
        _set_state(host, dev, ups_status="OL", battery_charge=100, battery_runtime=1800, ups_load=35)
        # power back = what a boot does: driver and upsd fresh (FSD cleared), then upsmon, then the CA
        host.run(f"rm -f /etc/killpower; systemctl restart nut-driver@{name} nut-server")
        _wait(host, f"upsc {name}@localhost ups.status 2>/dev/null | grep -qx OL", 30)
        host.run(f"systemctl restart nut-monitor; systemctl start {ca}")
    back = _wait(
        host, f"systemctl is-active --quiet {ca} && upsc {name}@localhost ups.status | grep -qx OL", 30
    )
    evidence.add("power back: CA active after (s)", back)
    assert back is not None, "F.52: after power returned the CA did not come back"
