"""Drills (tests/lab/drills/*.py, docs/drills.md) against the whole lab: the session lab converged by
``make lab`` (the ``converged_lab`` fixture, shared with test_make_lab.py, whose checks run first because
this module sorts after it), or the inventory named by ``CKMS_DRILL_INVENTORY`` (a developer's converged
``make lab``, or the Molecule drill topology; parts needing the daemon may then skip).

On the session lab every part must run and pass: the daemon is deployed, so the EST enrolment through
the router, the clock gate refusing issuance, the ``daemon.stop`` audit record and the HSM error state
are all exercised. There ``make lab`` itself ran the drills (scripts/lab-converge.sh --all) and wrote
build/report-labtest/drills.json: these tests check its records instead of running every drill twice;
the last test re-renders the labtest report with them. With ``CKMS_DRILL_INVENTORY`` the drills run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lab_support import REPO, STACK

pytestmark = pytest.mark.lab

DRILLS = REPO / "tests" / "lab" / "drills"
REPORT = REPO / "build" / "report-labtest"
ORDER = ["flows", "dos", "router_compromise", "time_source", "power", "hsm", "rollover"]


@pytest.fixture(scope="module")
def drill_target(request) -> tuple[Path, Path, bool]:
    """(inventory, results file, strict): strict on the session lab (no part may skip)."""
    external = os.environ.get("CKMS_DRILL_INVENTORY")
    if external:
        results = Path(os.environ.get("CKMS_DRILL_RESULTS", REPO / "build" / "report" / "drills.json"))
        return Path(external), results, False
    request.getfixturevalue(
        "converged_lab"
    )  # make lab ran the drills and wrote their records (this run's only)
    return REPO / "inventories" / STACK / "generated" / "hosts.yml", REPORT / "drills.json", True


@pytest.mark.parametrize("drill", ORDER)
def test_drill(drill: str, drill_target) -> None:
    inv, results, strict = drill_target
    if not strict:
        proc = subprocess.run(
            [sys.executable, str(DRILLS / f"{drill}.py"), "--inventory", str(inv), "--results", str(results)],
            capture_output=True,
            text=True,
            timeout=900,
            env=dict(os.environ),
        )
        print(proc.stdout[-3000:])
        assert proc.returncode == 0, f"drill {drill} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-1000:]}"
    assert results.is_file(), f"no drill records at {results}"
    records = [r for r in json.loads(results.read_text()) if r["test"].endswith(f"/{drill}.py")]
    assert records, f"drill {drill} wrote no check records"
    assert all(
        set(r) >= {"check", "test", "host", "outcome", "duration_s", "message", "evidence", "at"}
        for r in records
    )
    bad = [(r["check"], r["outcome"], r["message"]) for r in records if r["outcome"] != "passed"]
    if strict:
        assert not bad, f"drill {drill} on the converged lab: {bad}"


def test_report_includes_the_drills(drill_target) -> None:
    inv, results, strict = drill_target
    if not strict:
        pytest.skip("report re-rendered only for the session lab")
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/python"),
            "-m",
            "hardening.report",
            "--results",
            str(REPORT / "results.json"),
            "--results",
            str(results),
            "--out",
            str(REPORT),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    body = (REPORT / "report.json").read_text()
    assert "drill_" in body and "F.52.low_battery_stops_ca_then_host" in body
