"""Molecule scenarios of the CA roles (hsm_client, ckms_ca, backup): create → converge → idempotence →
(backup: restore drill as side effect) → verify (the role's hardening checks) → destroy, each on a lab host
made by the same driver as the lab stack. One Molecule lab (``molb``, 10.237.0.0/24) reused in turn."""

from __future__ import annotations

import pytest
from lab_support import run_molecule

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("role", ["hsm_client", "ckms_ca", "backup"])
def test_molecule_scenario_passes_with_idempotence(role):
    out, elapsed = run_molecule(
        role, "default", lab="molb", network={"CKMS_MOLECULE_NET": "10.237.0"}, timeout=900
    )
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {elapsed:.0f} s")
