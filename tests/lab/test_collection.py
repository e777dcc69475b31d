"""The roles as the Ansible collection ckms.ca: ``make collection`` builds it, it installs offline into an
empty project (its own ansible.cfg and collections_path, no roles_path into this repository), a playbook
that uses every role by FQCN passes ``--syntax-check``, and ``ckms.ca.ntp`` converges by FQCN on one lab host
made by the project's host driver (then twice more: no changes), which is destroyed without a trace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from lab_support import REPO, lab_unavailable

from ckms_lab import hosts, paths

pytestmark = pytest.mark.lab

LAB = "colt"
NET = "10.241.0"
# every role of the repository goes into the collection (the same list the catalog names)
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())

ANSIBLE_CFG = """\
[defaults]
collections_path = {proj}/collections
roles_path = {proj}/roles
inventory = {proj}/hosts.yml
interpreter_python = /usr/bin/python3
retry_files_enabled = False
local_tmp = {proj}/.ansible-tmp

[ssh_connection]
pipelining = True
"""
ALL_ROLES = """\
- name: Every role of the collection by FQCN
  hosts: all
  roles:
{roles}
"""
CONVERGE = """\
- name: Time service by FQCN from the installed collection
  hosts: all
  roles:
    - role: ckms.ca.ntp
      vars:
        ntp_mode: server
        ntp_servers: []
        ntp_server_allow: ["{net}.0/24"]
"""


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}\n{out[-6000:]}"
    return out


def _recap(out: str) -> dict[str, int]:
    line = next(ln for ln in out.splitlines() if " : ok=" in ln)
    return {k: int(v) for k, v in (f.split("=") for f in line.split(":", 1)[1].split())}


def test_collection_installs_into_an_empty_project_and_converges_by_fqcn(tmp_path: Path):
    if lab_unavailable():
        pytest.skip(lab_unavailable())
    start = time.monotonic()
    # The project's own environment without any Ansible setting of this repository (ANSIBLE_CONFIG, paths).
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    _run(["make", "collection"], cwd=REPO, env=base)
    version = yaml.safe_load((REPO / "collection" / "galaxy.yml").read_text())["version"]
    tarball = REPO / "build" / "collection" / f"ckms-ca-{version}.tar.gz"
    assert tarball.is_file()

    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "ansible.cfg").write_text(ANSIBLE_CFG.format(proj=proj))
    env = dict(
        base,
        PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(proj / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    # Offline: Galaxy is not reachable; the dependency ansible.posix comes with the ansible pip package.
    out = _run(["ansible-galaxy", "collection", "install", str(tarball), "--offline"], cwd=proj, env=env)
    installed = proj / "collections" / "ansible_collections" / "ckms" / "ca"
    assert (installed / "MANIFEST.json").is_file(), out
    assert sorted(p.name for p in (installed / "roles").iterdir()) == sorted(ROLES)
    assert not list(installed.rglob("molecule")), (
        "Molecule scenarios belong to the repository, not the collection"
    )
    assert not (proj / "roles").exists()

    (proj / "all.yml").write_text(
        ALL_ROLES.format(roles="\n".join(f"    - role: ckms.ca.{r}" for r in ROLES))
    )
    (proj / "hosts.yml").write_text("all:\n  hosts:\n    placeholder:\n")
    _run(["ansible-playbook", "--syntax-check", "all.yml"], cwd=proj, env=env)

    try:
        created = subprocess.run(
            [
                str(REPO / ".venv/bin/python"),
                "-m",
                "ckms_lab.hosts",
                "create",
                "--lab",
                LAB,
                "--name",
                "ntp1",
                "--mgmt",
                f"{NET}.10/24",
                "--controller-address",
                f"{NET}.1/24",
            ],
            cwd=REPO,
            env=base,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        host = json.loads(created.stdout)
        ssh_args = (
            f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={proj / 'known_hosts'} "
            "-o IdentitiesOnly=yes -o ConnectTimeout=10"
        )
        (proj / "hosts.yml").write_text(
            json.dumps(
                {
                    "all": {
                        "hosts": {
                            "ntp1": {
                                "ansible_host": host["mgmt_address"],
                                "ansible_user": hosts.AUTOMATION_USER,
                                "ansible_become": True,
                                "ansible_ssh_private_key_file": str(paths.ssh_key()),
                                "ansible_ssh_common_args": ssh_args,
                            }
                        }
                    }
                }
            )
        )
        (proj / "converge.yml").write_text(CONVERGE.format(net=NET))
        first = _recap(_run(["ansible-playbook", "converge.yml"], cwd=proj, env=env, timeout=600))
        assert first["failed"] == 0 and first["unreachable"] == 0 and first["changed"] > 0, first
        second = _recap(_run(["ansible-playbook", "converge.yml"], cwd=proj, env=env, timeout=600))
        assert second["changed"] == 0 and second["failed"] == 0, f"not idempotent: {second}"

        check = subprocess.run(
            [
                "ssh",
                "-i",
                str(paths.ssh_key()),
                "-o",
                "BatchMode=yes",
                *ssh_args.split(),
                f"{hosts.AUTOMATION_USER}@{host['mgmt_address']}",
                'sudo -n sh -c \'systemctl is-active chrony && grep -c "^local stratum 8" /etc/chrony/chrony.conf'
                " && chronyc -n sources'",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.splitlines()[:2] == ["active", "1"], check.stdout
    finally:
        subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "ckms_lab.hosts", "destroy", "--lab", LAB, "--all"],
            cwd=REPO,
            env=base,
            check=False,
            capture_output=True,
            timeout=180,
        )
    left = hosts.lab_footprint(LAB)
    assert not any(left.values()), f"the collection test's lab left behind: {left}"
    print(
        f"collection build + install + syntax check + converge (twice) by FQCN: {time.monotonic() - start:.0f} s"
    )
