"""Session-wide lab for tests marked ``lab`` (see lab_support for how it is made and checked)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from lab_support import (
    REPO,
    STACK,
    Lab,
    converge_env,
    footprint,
    lab_env,
    lab_unavailable,
    pulumi_cmd,
    pulumi_environment,
)


@pytest.fixture(scope="session")
def lab() -> Lab:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    if any(footprint().values()):  # a crashed earlier run: clean up with the same script first
        subprocess.run([str(REPO / "scripts/lab-down.sh")], env=lab_env(), check=True, timeout=600)
    try:
        subprocess.run([str(REPO / "scripts/lab-up.sh")], env=lab_env(), check=True, timeout=3600)
        pulumi = pulumi_cmd()
        out = subprocess.run(
            [*pulumi, "stack", "output", "--json", "--show-secrets", "--stack", STACK],
            cwd=REPO / "pulumi",
            env=pulumi_environment(),
            capture_output=True,
            text=True,
            check=True,
        )
        yield Lab(json.loads(out.stdout), REPO / "inventories" / STACK / "generated" / "hosts.yml")
    finally:
        subprocess.run([str(REPO / "scripts/lab-down.sh")], env=lab_env(), check=True, timeout=600)
        after = footprint()
        assert not any(after.values()), f"lab-down left behind: {after}"


@pytest.fixture(scope="session")
def pulumi_env() -> dict[str, str]:
    return pulumi_environment()


@pytest.fixture(scope="session")
def converged_lab(lab) -> str:
    """`make lab` once on the session lab (site.yml, verify, first backup, report): shared by
    test_make_lab.py and the drills (test_make_lab_drills.py, which sorts after it). Returns make's output."""
    start = time.monotonic()
    # A guard against a hung converge, not a speed target (alone and without drills make lab took 15 min
    # on 2026-12-02; beside stream 2 longer): CI's own limit is 90 min, and a loaded machine once needed
    # more than 40.
    try:
        proc = subprocess.run(
            ["make", "lab"], cwd=REPO, env=converge_env(), capture_output=True, text=True, timeout=3600
        )
    except subprocess.TimeoutExpired as exc:
        # TimeoutExpired carries bytes even with text=True
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        pytest.fail(
            f"make lab did not finish in {exc.timeout} s; where it was:\n{out[-6000:]}\n--- stderr:\n{err[-2000:]}"
        )
    print(f"make lab (stack {STACK}): {time.monotonic() - start:.0f} s")
    if proc.returncode != 0:
        pytest.fail(f"make lab failed:\n{(proc.stdout + proc.stderr)[-8000:]}")
    return proc.stdout + proc.stderr
