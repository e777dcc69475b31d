"""The CA daemon's AppArmor profile must not switch profiles on exec.

ckms-ca.service (and the self-test and expiry units that run ``ckms`` under the same profile) set
NoNewPrivileges, under which the kernel refuses any exec transition to another profile ("no new
privs"). A ``Px``/``Cx``/``Ux`` rule there compiles and loads, and then fails only on a real AppArmor
kernel: on the VM lab the clock gate's ``chronyc Cx -> chronyc`` left /health unanswered (F.06 k, A.33).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "roles/os_hardening/templates/apparmor-ckms-ca.j2"
UNITS = [
    ROOT / f"roles/ckms_ca/templates/{name}.service.j2"
    for name in ("ckms-ca", "ckms-selftest", "ckms-expiry")
]
# An exec rule's mode ends in x; a transition mode names a target kind (P, C, U, in either case).
EXEC_MODE = re.compile(r"\s([a-zA-Z]*x)\s*(?:->[^,]*)?,\s*$")


def exec_modes(text: str) -> list[tuple[str, str]]:
    """(rule, mode) for each exec rule of the profile text, comments left out."""
    modes = []
    for line in text.splitlines():
        rule = line.split("#", 1)[0].rstrip()
        match = EXEC_MODE.search(rule)
        if match and not rule.lstrip().startswith("deny"):
            modes.append((rule.strip(), match.group(1)))
    return modes


def test_units_running_under_the_profile_set_no_new_privileges() -> None:
    for unit in UNITS:
        assert re.search(r"^NoNewPrivileges=(yes|true)$", unit.read_text(), re.M), unit.name


def test_profile_execs_only_inherit() -> None:
    modes = exec_modes(PROFILE.read_text())
    assert any("chronyc" in rule for rule, _ in modes), "the clock gate's chronyc rule is gone"
    transitions = [rule for rule, mode in modes if set(mode) & set("PCUpcu")]
    assert transitions == [], f"profile transitions refused under NoNewPrivileges: {transitions}"


def test_the_check_sees_a_child_profile_transition() -> None:
    assert exec_modes("  /usr/bin/chronyc Cx -> chronyc,\n") == [("/usr/bin/chronyc Cx -> chronyc,", "Cx")]
