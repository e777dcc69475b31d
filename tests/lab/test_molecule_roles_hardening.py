"""Molecule scenarios of the host-hardening roles (os_hardening, audit, integrity, antimalware):
create → converge → idempotence (zero changes) → verify (the role's hardening checks from hardening/checks)
→ destroy, each on one lab host made by the same driver as the lab stack; then os_hardening's ``breakage``
scenario, which converges the whole CA baseline, breaks controls and asserts that each matching check fails
naming its guidance item. Serial, one Molecule lab (``mola``, 10.236.0.0/24) reused in turn."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from lab_support import REPO, lab_unavailable

from ckms_lab import hosts

pytestmark = pytest.mark.lab

MOLECULE_LAB = "mola"
MOLECULE_NET = "10.236.0"


def _molecule(role: str, scenario: str) -> tuple[subprocess.CompletedProcess, float]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}", CKMS_MOLECULE_LAB=MOLECULE_LAB,
               CKMS_MOLECULE_NET=MOLECULE_NET, ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", NO_COLOR="1")
    start = time.monotonic()
    try:
        proc = subprocess.run(["molecule", "test", "-s", scenario], cwd=REPO / "roles" / role, env=env,
                              capture_output=True, text=True, timeout=1200)
    finally:
        subprocess.run([str(REPO / ".venv/bin/python"), "-m", "ckms_lab.hosts", "destroy", "--lab", MOLECULE_LAB,
                        "--all"], cwd=REPO, check=False, capture_output=True, timeout=180)
    elapsed = time.monotonic() - start
    left = hosts.lab_footprint(MOLECULE_LAB)
    assert not any(left.values()), left
    return proc, elapsed


@pytest.mark.parametrize("role", ["os_hardening", "audit", "integrity", "antimalware"])
def test_molecule_scenario_passes_with_idempotence(role):
    proc, elapsed = _molecule(role, "default")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {elapsed:.0f} s")


def test_breakage_checks_fail_naming_the_item():
    proc, elapsed = _molecule("os_hardening", "breakage")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "verify: Executed: Successful" in out
    print(f"molecule test os_hardening/breakage: {elapsed:.0f} s")
