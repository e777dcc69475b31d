"""Molecule's delegated driver makes its instances with the lab host driver (molecule/shared/*.yml):
a full ``molecule test`` converges an instance over SSH and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from lab_support import REPO, lab_unavailable

from ckms_lab import hosts

pytestmark = pytest.mark.lab

SCENARIO = """\
driver: {name: default, options: {managed: true}}
platforms: [{name: instance}]
provisioner:
  name: ansible
  playbooks: {create: %(repo)s/molecule/shared/create.yml, destroy: %(repo)s/molecule/shared/destroy.yml,
              converge: converge.yml}
verifier: {name: ansible}
"""
CONVERGE = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.command: systemctl is-system-running --wait
      register: state
      changed_when: false
    - ansible.builtin.assert: {that: ["state.stdout == 'running'"]}
"""


def test_molecule_delegated_driver_uses_the_lab_host_driver(tmp_path: Path):
    if lab_unavailable():
        pytest.skip(lab_unavailable())
    scenario = tmp_path / "molecule" / "default"
    scenario.mkdir(parents=True)
    (scenario / "molecule.yml").write_text(SCENARIO % {"repo": REPO})
    (scenario / "converge.yml").write_text(textwrap.dedent(CONVERGE))
    env = dict(
        os.environ,
        PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
        CKMS_MOLECULE_LAB="moltest",
        CKMS_MOLECULE_NET="10.237.0",
        ANSIBLE_NOCOLOR="1",
        PY_COLORS="0",
    )
    proc = subprocess.run(
        ["molecule", "test", "-s", "default"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "failed=0" in proc.stdout + proc.stderr
    left = hosts.lab_footprint("moltest")
    assert not any(left.values()), left
