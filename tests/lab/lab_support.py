"""Helpers for the session-wide lab for tests marked ``lab``: one lab is brought up for the whole run, shared by every
lab test, and brought down at the end with a check that nothing of it is left on the machine.

The fixture uses the same scripts as ``make lab-up`` / ``make lab-down`` (which build the Pulumi CLI
and the golden image when they are missing), on a separate stack (``labtest``: lab name ``lt``,
network 10.232.0.0/16) so a developer's own ``make lab`` is never touched by the suite.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ckms_lab import hosts, paths

REPO = Path(__file__).resolve().parents[2]
STACK = "labtest"
LAB = "lt"


def lab_env() -> dict[str, str]:
    return dict(os.environ, CKMS_LAB_STACK=STACK, CKMS_LAB_NAME=LAB)


def converge_env() -> dict[str, str]:
    """Environment of make lab / scripts/lab-converge.sh on the suite's stack (report in build/report-labtest)."""
    return dict(
        os.environ,
        CKMS_LAB_STACK=STACK,
        CKMS_LAB_NAME=LAB,
        ANSIBLE_FORCE_COLOR="0",
        REPORT_OUT=str(REPO / "build" / "report-labtest"),
    )


def lab_unavailable() -> str | None:
    """Why lab hosts cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "lab hosts need root"
    for tool in ("systemd-nspawn", "debootstrap", "ip", "nft", "go"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make deps installs the Debian packages; Go is needed for the CLI)"
    return None


def run_molecule(
    role: str, scenario: str, *, lab: str, network: dict[str, str], timeout: float = 1200
) -> tuple[str, float]:
    """``molecule test -s scenario`` of a role on its own Molecule lab (``lab``; ``network``: the
    CKMS_MOLECULE_NET/PFX it segments), then destroy that lab and assert nothing of it is left.

    Returns the combined output and the seconds it took; the caller asserts what the scenario must show.
    """
    import pytest

    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    env = dict(
        os.environ,
        PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
        CKMS_MOLECULE_LAB=lab,
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
        NO_COLOR="1",
        **network,
    )
    start = time.monotonic()
    try:
        proc = subprocess.run(
            ["molecule", "test", "-s", scenario],
            cwd=REPO / "roles" / role,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "ckms_lab.hosts", "destroy", "--lab", lab, "--all"],
            cwd=REPO,
            check=False,
            capture_output=True,
            timeout=180,
        )
    elapsed = time.monotonic() - start
    left = hosts.lab_footprint(lab)
    assert not any(left.values()), left
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out, elapsed


@dataclass
class Lab:
    outputs: dict
    inventory: Path

    @property
    def hosts(self) -> dict[str, dict]:
        return self.outputs["hosts"]

    def ssh(
        self, host: str, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run ``command`` as root on a lab host over the management network, host key pinned: as the
        automation account through ``sudo -n`` (root login is closed to every address)."""
        addr = self.hosts[host]["mgmt_address"]
        args = [
            "ssh",
            "-i",
            str(paths.ssh_key()),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            f"UserKnownHostsFile={self.inventory.parent / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{hosts.AUTOMATION_USER}@{addr}",
            f"sudo -n sh -c {shlex.quote(command)}",
        ]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{host}: {command!r} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


def footprint() -> dict[str, list[str]]:
    return hosts.lab_footprint(LAB)


def pulumi_environment() -> dict[str, str]:
    """The environment scripts/lab-env.sh sets, for running the CLI from a test."""
    cache = paths.cache_dir()
    bin_dir = subprocess.run(
        [str(REPO / "scripts/build-pulumi.sh"), str(REPO / ".venv")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return dict(
        lab_env(),
        CKMS_VENV=str(REPO / ".venv"),
        PATH=f"{bin_dir}:{REPO / '.venv/bin'}:{os.environ['PATH']}",
        PULUMI_HOME=str(cache / "pulumi/home"),
        PULUMI_BACKEND_URL=f"file://{REPO / 'pulumi/.state'}",
        PULUMI_CONFIG_PASSPHRASE_FILE=str(cache / "pulumi/passphrase"),
        PULUMI_SKIP_UPDATE_CHECK="true",
        PULUMI_DIY_BACKEND_NO_LEGACY_WARNING="true",
    )


def pulumi_cmd() -> list[str]:
    return ["pulumi"]
