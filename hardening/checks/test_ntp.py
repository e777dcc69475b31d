"""Checks of the ntp role (A.33-A.35) on the CA server: chrony runs, uses the trusted sources of the
environment only, is synchronised to one of them, and its offset is inside the 10 s bound that the
CA's clock gate enforces (the gate itself is proven by the time drill, tests/lab/drills/time.sh).

Run over SSH against an inventory (make report) or by Molecule (roles/ntp/molecule)."""

from __future__ import annotations

import pytest

testinfra_hosts = ["ansible://ca"]

BOUND_S = 10.0


def trusted(host) -> list[str]:
    v = host.ansible.get_variables()
    servers = v.get("ntp_servers") or v.get("ckms_time_sources") or []
    return [s["host"] if isinstance(s, dict) else str(s) for s in servers]


def tracking(host) -> list[str]:
    out = host.run("chronyc -c tracking")
    assert out.rc == 0, f"A.35: chronyc tracking fails: {out.stderr.strip()}"
    return out.stdout.strip().split(",")


@pytest.mark.check("check:A.35.chronyd_synchronised")
def test_chronyd_synchronised(host, evidence):
    svc = host.service("chrony")
    evidence.add("chrony active/enabled", [svc.is_running, svc.is_enabled])
    assert svc.is_running and svc.is_enabled, "A.35: chronyd is not running and enabled"
    sources = host.run("chronyc -c sources").stdout.strip().splitlines()
    evidence.add("chronyc -c sources", sources)
    selected = [s.split(",")[2] for s in sources if s.split(",")[1] == "*"]
    assert selected, "A.35: chrony has no selected (synchronised) source"
    assert selected[0] in trusted(host), f"A.35: selected source {selected[0]} is not a trusted source"


@pytest.mark.check("check:A.33.chrony_offset_within_10s")
def test_offset_within_bound(host, evidence):
    t = tracking(host)
    evidence.add("chronyc -c tracking", ",".join(t))
    leap, offset, root_delay, root_disp = t[-1], float(t[4]), float(t[10]), float(t[11])
    bound = abs(offset) + root_delay / 2 + root_disp  # chrony's own error bound of the system clock
    evidence.add("offset / error bound (s)", [offset, round(bound, 6)])
    assert leap != "Not synchronised", "A.33: chrony reports the clock is not synchronised"
    assert bound < BOUND_S, f"A.33: clock error bound {bound:.3f} s is not within {BOUND_S:g} s"
    conf = host.file("/etc/chrony/chrony.conf").content_string
    maxdist = [float(ln.split()[1]) for ln in conf.splitlines() if ln.startswith("maxdistance")]
    evidence.add("maxdistance", maxdist)
    assert maxdist and maxdist[0] < BOUND_S, "A.33: maxdistance missing or not below the 10 s bound"
    assert any(ln.startswith("makestep") for ln in conf.splitlines()), (
        "A.33: no makestep (large start offsets stay)"
    )


@pytest.mark.check("check:A.34.only_trusted_ntp_sources")
def test_only_trusted_sources(host, evidence):
    want = set(trusted(host))
    conf = host.file("/etc/chrony/chrony.conf").content_string.splitlines()
    directives = [ln.split()[0:2] for ln in conf if ln.strip() and not ln.startswith("#")]
    configured = {d[1] for d in directives if d[0] in ("server", "peer")}
    evidence.add("trusted (inventory)", sorted(want))
    evidence.add("configured", sorted(configured))
    bad = [d for d in directives if d[0] in ("pool", "sourcedir", "refclock")]
    assert not bad, f"A.34: other time sources are configured: {bad}"
    assert configured and configured <= want, (
        f"A.34: untrusted sources configured: {sorted(configured - want)}"
    )
    dropins = host.run("ls /etc/chrony/sources.d/ /etc/chrony/conf.d/ 2>/dev/null").stdout.split()
    evidence.add("drop-ins", dropins or "none")
    assert not [d for d in dropins if d.endswith((".sources", ".conf"))], "A.34: unmanaged chrony drop-ins"
    live = {s.split(",")[2] for s in host.run("chronyc -c sources").stdout.strip().splitlines() if s}
    evidence.add("live sources", sorted(live))
    assert live <= want, f"A.34: chrony uses untrusted sources: {sorted(live - want)}"
    timesyncd = host.package("systemd-timesyncd")
    assert not timesyncd.is_installed, "A.34: a second time daemon (systemd-timesyncd) is installed"
