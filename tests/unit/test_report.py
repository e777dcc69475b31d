"""The hardening report joins catalog and check results correctly and renders every format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

from hardening.catalog import load_catalog
from hardening.report import evaluate, write_report

ROOT = Path(__file__).resolve().parents[2]


def record(check: str, outcome: str, host: str = "ca1", message: str | None = None) -> dict:
    return {
        "check": check,
        "test": "t",
        "host": host,
        "outcome": outcome,
        "duration_s": 0.1,
        "message": message,
        "evidence": [{"label": "sshd -T", "value": "permitrootlogin no"}],
        "at": "2026-01-01T00:00:00Z",
    }


def test_status_follows_results() -> None:
    catalog = load_catalog()
    f06 = catalog["F.06"]
    checks = f06.all_checks()
    all_pass = [record(c, "passed") for c in checks]
    by_id = {i.control.id: i for i in evaluate(catalog, all_pass)}
    assert by_id["F.06"].status == "pass"
    one_fail = all_pass[:-1] + [record(checks[-1], "failed", message="root login is enabled")]
    assert {i.control.id: i for i in evaluate(catalog, one_fail)}["F.06"].status == "fail"
    assert {i.control.id: i for i in evaluate(catalog, all_pass[:1])}["F.06"].status == "partial"
    # no result: the checks exist (not executed) or a check is named that nobody wrote (not written)
    assert {i.control.id: i for i in evaluate(catalog, [])}["F.06"].status == "not-executed"
    assert {i.control.id: i for i in evaluate(catalog, [], defined={})}["F.06"].status == "not-written"
    na = next(c for c in catalog.values() if c.applicability == "not-applicable")
    assert by_id[na.id].status == "not-applicable"


def test_all_formats_and_languages(tmp_path: Path) -> None:
    catalog = load_catalog()
    checks = catalog["F.06"].all_checks()
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps([record(checks[0], "failed", message="PermitRootLogin yes"), record(checks[1], "passed")])
    )
    for lang in ("en", "ja"):
        out = tmp_path / lang
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "hardening.report",
                "--results",
                str(results),
                "--out",
                str(out),
                "--lang",
                lang,
                "--require",
                "F",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 1 and "F.06: fail" in proc.stdout
        doc = json.loads((out / "report.json").read_text())
        assert len(doc["items"]) == 163 and doc["lang"] == lang
        f06 = next(i for i in doc["items"] if i["id"] == "F.06")
        assert f06["status"] == "fail" and f06["results"][0]["message"] == "PermitRootLogin yes"
        junit = ET.parse(out / "junit.xml").getroot()
        assert int(junit.find("testsuite[@name='guidance-F']").get("failures")) == 1
        page = (out / "report.html").read_text()
        assert "PermitRootLogin yes" in page and ("不合格" if lang == "ja" else "FAIL") in page
        assert checks[0] in (out / "summary.md").read_text()


def test_write_report_returns_paths(tmp_path: Path) -> None:
    files = write_report(tmp_path, evaluate(load_catalog(), []), "en")
    assert all(p.exists() for p in files.values())


def test_a_check_skipped_by_one_source_and_passed_by_another_passes() -> None:
    catalog = load_catalog()
    checks = catalog["F.52"].all_checks()
    records = [record(c, "passed") for c in checks] + [
        record(checks[-1], "skipped", message="runs as a drill")
    ]
    assert {i.control.id: i for i in evaluate(catalog, records)}["F.52"].status == "pass"
    only_skipped = [record(checks[0], "passed"), record(checks[-1], "skipped")]
    assert {i.control.id: i for i in evaluate(catalog, only_skipped)}["F.52"].status == "partial"


def test_limitations_and_suite_tests_are_shown(tmp_path: Path) -> None:
    catalog = load_catalog()
    checks = catalog["F.06"].all_checks()
    limited = {
        **record("check:F.06.k.apparmor_enforcing", "passed"),
        "limitation": "no AppArmor in the lab kernel",
    }
    records = [record(c, "passed") for c in checks if c != limited["check"]] + [limited]
    items = evaluate(catalog, records)
    f06 = {i.control.id: i for i in items}["F.06"]
    # AppArmor enforcement is a run-time claim: with what it could not see, it passed on configuration only
    assert f06.status == "pass-configuration" and [r["check"] for r in f06.limitations] == [
        "check:F.06.k.apparmor_enforcing"
    ]
    write_report(tmp_path, items, "en")
    doc = json.loads((tmp_path / "report.json").read_text())
    item = next(i for i in doc["items"] if i["id"] == "F.06")
    assert item["limitations"] == [
        {
            "check": "check:F.06.k.apparmor_enforcing",
            "host": "ca1",
            "limitation": "no AppArmor in the lab kernel",
        }
    ]
    assert "no AppArmor in the lab kernel" in (tmp_path / "summary.md").read_text()
    assert "no AppArmor in the lab kernel" in (tmp_path / "report.html").read_text()
    f14 = next(i for i in doc["items"] if i["id"] == "F.14")
    assert f14["supporting_tests"] and all(t.startswith("test:") for t in f14["supporting_tests"])
    assert not [c for c in f14["checks_without_results"] if c.startswith("test:")]
