"""Molecule scenarios of the perimeter roles (router, ids, ntp, ups): create → converge → idempotence (zero
changes) → verify (the role's hardening checks from hardening/checks) → destroy, on lab hosts made by the same
driver as the lab stack. Serial, one Molecule lab (``molp``, 10.239.0.0/16: these scenarios
segment a /16 like the lab, ``CKMS_MOLECULE_PFX``)) reused in turn.
(The router's ``drills`` scenario is the stand-in topology for the drills; the drills themselves run
against the converged session lab in test_make_lab_drills.py.)"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from lab_support import REPO, lab_unavailable

from ckms_lab import hosts

pytestmark = pytest.mark.lab

MOLECULE_LAB = "molp"
MOLECULE_PFX = "10.239"


@pytest.mark.parametrize("role", ["router", "ids", "ntp", "ups"])
def test_molecule_scenario_passes_with_idempotence(role):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}", CKMS_MOLECULE_LAB=MOLECULE_LAB,
               CKMS_MOLECULE_PFX=MOLECULE_PFX, ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", NO_COLOR="1")
    start = time.monotonic()
    try:
        proc = subprocess.run(["molecule", "test", "-s", "default"], cwd=REPO / "roles" / role, env=env,
                              capture_output=True, text=True, timeout=1200)
    finally:
        subprocess.run([str(REPO / ".venv/bin/python"), "-m", "ckms_lab.hosts", "destroy", "--lab", MOLECULE_LAB,
                        "--all"], cwd=REPO, check=False, capture_output=True, timeout=180)
    elapsed = time.monotonic() - start
    left = hosts.lab_footprint(MOLECULE_LAB)
    assert not any(left.values()), left
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {elapsed:.0f} s")
