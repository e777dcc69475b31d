"""Molecule scenarios of the host-hardening roles (os_hardening, audit, integrity, antimalware):
create → converge → idempotence (zero changes) → verify (the role's hardening checks from hardening/checks)
→ destroy, each on one lab host made by the same driver as the lab stack; then os_hardening's ``breakage``
scenario, which converges the whole CA baseline, breaks controls and asserts that each matching check fails
naming its guidance item. Serial, one Molecule lab (``mola``, 10.236.0.0/24) reused in turn."""

from __future__ import annotations

import pytest
from lab_support import run_molecule

pytestmark = pytest.mark.lab

NETWORK = {"CKMS_MOLECULE_NET": "10.236.0"}


@pytest.mark.parametrize("role", ["os_hardening", "audit", "integrity", "antimalware"])
def test_molecule_scenario_passes_with_idempotence(role):
    out, elapsed = run_molecule(role, "default", lab="mola", network=NETWORK)
    assert "idempotence: Executed: Successful" in out
    assert "verify: Executed: Successful" in out
    print(f"molecule test {role}: {elapsed:.0f} s")


def test_breakage_checks_fail_naming_the_item():
    out, elapsed = run_molecule("os_hardening", "breakage", lab="mola", network=NETWORK)
    assert "verify: Executed: Successful" in out
    print(f"molecule test os_hardening/breakage: {elapsed:.0f} s")
