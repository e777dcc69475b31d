"""Run provenance: one run ID across the report's inputs, and the run's facts in its header.

A file of another run (another ID, or made before the run started) must not count as this run's
evidence: it is left out and listed, or the report refuses to render.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hardening import provenance
from hardening.catalog import CATALOG_DIR, load_catalog

ROOT = Path(__file__).resolve().parents[2]
CHECKS_CONFTEST = ROOT / "hardening" / "checks" / "conftest.py"


def rec(check: str, outcome: str = "passed", **extra: Any) -> dict[str, Any]:
    return {
        "check": check,
        "test": "t",
        "host": "ca1",
        "outcome": outcome,
        "duration_s": 0.1,
        "message": None,
        "evidence": [],
        "limitation": None,
        "at": provenance.iso(provenance.now_utc()),
        **extra,
    }


def run_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def start(out: Path, inventory: Path | None = None) -> dict[str, Any]:
    args = ["hardening.provenance", "start", "--out", str(out), "--command", "make lab"]
    if inventory:
        args += ["--inventory", str(inventory)]
    proc = run_py(*args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "provenance.json").read_text())
    assert proc.stdout.strip() == f"CKMS_RUN_ID={doc['run_id']}"
    return doc


def test_start_records_the_run_facts(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.yml"
    hosts.write_text("all: {hosts: {ca1: {}}}\n")
    doc = start(tmp_path, hosts)
    assert re.fullmatch(r"run-\d{8}T\d{6}Z-[0-9a-f]{8}", doc["run_id"])
    if (ROOT / ".git").exists():  # F.55 runs these tests on an exported tree: no commit to record there
        assert re.fullmatch(r"[0-9a-f]{40}", doc["commit"]) and isinstance(doc["dirty"], bool)
    else:
        assert doc["commit"] is None
    lines = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(CATALOG_DIR.glob("*.yml"))
    )
    assert doc["catalog"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert doc["inventory_digest"] == "sha256:" + hashlib.sha256(hosts.read_bytes()).hexdigest()
    assert doc["tools"]["python"] and doc["tools"]["pytest"] and "ansible-core" in doc["tools"]
    assert "@" in doc["operator"] and doc["command"] == "make lab"
    assert provenance.parse_time(doc["started_at"]) is not None


def test_malformed_run_id_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("[]")
    proc = run_py(
        "hardening.report", "--results", str(results), "--out", str(tmp_path / "o"), "--run-id", "x; rm"
    )
    assert proc.returncode == 2 and "malformed run ID 'x; rm'" in proc.stderr


def _report(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_py("hardening.report", "--out", str(out), *args, env={provenance.ENV: ""})


def test_other_runs_are_left_out_and_listed_or_refused(tmp_path: Path) -> None:
    run = start(tmp_path)
    checks = load_catalog()["F.06"].all_checks()
    mine = [rec(c, run_id=run["run_id"]) for c in checks]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(mine))
    # yesterday's drill file: one run ID-less failing record (older than the start), one of another run
    drills = tmp_path / "drills.json"
    drills.write_text(
        json.dumps(
            [
                rec(checks[0], "failed", at="2026-01-01T00:00:00Z"),
                rec(checks[1], "failed", run_id="run-20260101T000000Z-00000000"),
            ]
        )
    )
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"collected_at": "2026-01-01T00:00:00Z", "hosts": {}}))
    proc = _report(
        tmp_path, "--results", str(results), "--results", str(drills), "--inventory", str(inventory)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"run: {run['run_id']}; inputs of another run: 2, records left out: 2" in proc.stdout
    doc = json.loads((tmp_path / "report.json").read_text())
    f06 = next(i for i in doc["items"] if i["id"] == "F.06")
    assert f06["status"] == "pass"  # the other runs' failures are not this run's evidence
    assert {r["check"] for r in doc["other_run_records"]} == {checks[0], checks[1]}
    head = doc["provenance"]
    assert head["run_id"] == run["run_id"] and head["commit"] == run["commit"]
    verdicts = {Path(i["path"]).name: i["verdict"] for i in head["inputs"]}
    assert verdicts == {"results.json": "this-run", "drills.json": "other-run", "inventory.json": "other-run"}
    assert "hardening.report" in head["report_command"]
    page = (tmp_path / "report.html").read_text()
    assert run["run_id"] in page and "Records of another run (not counted)" in page
    assert run["run_id"] in (tmp_path / "summary.md").read_text()
    # the report rewrote provenance.json with the same run: a second rendering reads it again
    assert json.loads((tmp_path / "provenance.json").read_text())["run_id"] == run["run_id"]
    refused = _report(tmp_path, "--results", str(results), "--results", str(drills), "--other-runs", "refuse")
    assert refused.returncode == 2
    assert f"drills.json belongs to another run than {run['run_id']}" in refused.stderr


def test_a_run_id_that_is_not_the_runs_is_refused(tmp_path: Path) -> None:
    start(tmp_path)
    results = tmp_path / "results.json"
    results.write_text("[]")
    proc = _report(tmp_path, "--results", str(results), "--run-id", "run-20260101T000000Z-00000000")
    assert proc.returncode == 2 and "is not the run of" in proc.stderr


def test_without_a_run_the_header_says_so(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps([rec("check:F.06.l.sshd_hardened")]))
    proc = _report(tmp_path / "out", "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["provenance"]["run_id"] is None and doc["provenance"]["inputs"][0]["verdict"] == "unchecked"
    assert "no run ID" in (tmp_path / "out" / "report.html").read_text()


def test_the_checks_stamp_their_records_with_the_run_id(tmp_path: Path) -> None:
    """hardening/checks/conftest.py writes CKMS_RUN_ID into every record (the real plugin, a toy check)."""
    shutil.copy(CHECKS_CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_toy.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.check("check:F.06.l.sshd_hardened")\n'
        "def test_toy(evidence):\n"
        '    evidence.add("seen", "ok")\n'
    )
    out = tmp_path / "results.json"
    run_id = provenance.new_run_id()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
            "--rootdir",
            str(tmp_path),
            "--ckms-results",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, provenance.ENV: run_id},
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    records = json.loads(out.read_text())
    assert [r["run_id"] for r in records] == [run_id]
