"""Molecule scenarios of the CA roles (hsm_client, ckms_ca, backup): create → converge → idempotence →
(backup: restore drill as side effect) → verify (the role's hardening checks) → destroy, each on a lab host
made by the same driver as the lab stack. One Molecule lab (``molb``, 10.237.0.0/24) reused in turn."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from lab_support import REPO, lab_unavailable

from ckms_lab import hosts

pytestmark = pytest.mark.lab

MOLECULE_LAB = "molb"
MOLECULE_NET = "10.237.0"


@pytest.mark.parametrize("role", ["hsm_client", "ckms_ca", "backup"])
def test_molecule_scenario_passes_with_idempotence(role):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}", CKMS_MOLECULE_LAB=MOLECULE_LAB,
               CKMS_MOLECULE_NET=MOLECULE_NET, ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", NO_COLOR="1")
    start = time.monotonic()
    try:
        proc = subprocess.run(["molecule", "test"], cwd=REPO / "roles" / role, env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        subprocess.run([str(REPO / ".venv/bin/python"), "-m", "ckms_lab.hosts", "destroy", "--lab", MOLECULE_LAB,
                        "--all"], cwd=REPO, check=False, capture_output=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {time.monotonic() - start:.0f} s")
    left = hosts.lab_footprint(MOLECULE_LAB)
    assert not any(left.values()), left
