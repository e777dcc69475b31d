"""Molecule scenarios of the perimeter roles (router, ids, ntp, ups): create → converge → idempotence (zero
changes) → verify (the role's hardening checks from hardening/checks) → destroy, on lab hosts made by the same
driver as the lab stack. Serial, one Molecule lab (``molp``, 10.239.0.0/16: these scenarios
segment a /16 like the lab, ``CKMS_MOLECULE_PFX``)) reused in turn.
(The router's ``drills`` scenario is the stand-in topology for the drills; the drills themselves run
against the converged session lab in test_make_lab_drills.py.)"""

from __future__ import annotations

import pytest
from lab_support import run_molecule

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("role", ["router", "ids", "ntp", "ups"])
def test_molecule_scenario_passes_with_idempotence(role):
    out, elapsed = run_molecule(role, "default", lab="molp", network={"CKMS_MOLECULE_PFX": "10.239"})
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {elapsed:.0f} s")
